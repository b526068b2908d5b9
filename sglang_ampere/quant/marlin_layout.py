"""dsv4_int tensors -> the exact inputs SGLang's Marlin repack / scale permutation expect.

Pure torch, no SGLang import, so CPU tests can check every layout against an independent
unpack. The GPU methods feed these results to ``gptq_marlin_repack`` and
``marlin_permute_scales``; nothing here is Marlin's own tile shuffle.

GPTQ layout (what ``gptq_marlin_repack(b_q_weight, perm, size_k, size_n, num_bits)`` reads):
an int32 ``[K / (32 / bits), N]`` tensor; row ``r`` column ``n`` packs the codes of
K indices ``r*p .. r*p + p-1`` (p = 32/bits) for output column ``n``, lowest K index in the
lowest bits. Codes are unsigned with the Marlin bias: ``uint4b8`` (value + 8) for 4 bits,
``uint8b128`` (value + 128) for 8 bits.

Because dsv4_int stores rows ``[N, K/2]`` (4-bit, low nibble = even K) or ``[N, K]``
(8-bit) and x86/ARM/CUDA are little-endian, viewing a row's bytes as int32 gives exactly
the GPTQ word for that row; a transpose finishes the job. No value transform is needed
for INT4 (dsv4_int already stores uint4b8); block INT8 (signed) gets ``+128``.

Scale layout (what ``marlin_permute_scales(s, size_k, size_n, group_size)`` reads):
``[K / group, N]`` in the activation dtype (BF16 here), or ``[1, N]`` for per-channel.
A 128x128 block scale ``[ceil(N/128), ceil(K/128)]`` becomes group-128 scales by giving
every output row its block row's scale.
"""

from __future__ import annotations

import torch

from ..formats.constants import BLOCK, INT8_CHANNEL_BIAS
from ..formats.errors import FormatError, check_dtype


def _rows_as_int32(rows_bytes: torch.Tensor, name: str | None) -> torch.Tensor:
    if rows_bytes.shape[-1] % 4:
        raise FormatError(
            name, f"row length {rows_bytes.shape[-1]} bytes is not a multiple of 4; cannot form int32 GPTQ words"
        )
    return rows_bytes.contiguous().view(torch.int32)


def int4_to_gptq(packed: torch.Tensor, name: str | None = None) -> torch.Tensor:
    """uint4b8 ``[N, K/2]`` (int8 or uint8 storage) -> GPTQ int32 ``[K/8, N]``."""
    check_dtype(packed, (torch.int8, torch.uint8), name, "a packed INT4 weight")
    return _rows_as_int32(packed.view(torch.uint8), name).t().contiguous()


def int4_experts_to_gptq(packed: torch.Tensor, name: str | None = None) -> torch.Tensor:
    """``[E, N, K/2]`` -> ``[E, K/8, N]`` (one GPTQ matrix per expert)."""
    return torch.stack([int4_to_gptq(packed[e], name) for e in range(packed.shape[0])])


def int8_block_to_gptq(q: torch.Tensor, name: str | None = None) -> torch.Tensor:
    """Signed int8 ``[N, K]`` (block variant) -> GPTQ int32 ``[K/4, N]`` of uint8b128 codes."""
    check_dtype(q, torch.int8, name, "a block INT8 weight")
    biased = (q.to(torch.int16) + INT8_CHANNEL_BIAS).to(torch.uint8)
    return _rows_as_int32(biased, name).t().contiguous()


def uint8_channel_to_gptq(u: torch.Tensor, name: str | None = None) -> torch.Tensor:
    """uint8b128 ``[N, K]`` (channel variant, already biased) -> GPTQ int32 ``[K/4, N]``."""
    check_dtype(u, torch.uint8, name, "a channel INT8 (uint8b128) weight")
    return _rows_as_int32(u, name).t().contiguous()


def block_scales_to_groups(
    scale: torch.Tensor, n: int, k: int, name: str | None = None, block: int = BLOCK
) -> torch.Tensor:
    """BF16 block scales ``[ceil(N/b), ceil(K/b)]`` -> group-``b`` scales ``[K/b, N]``."""
    if k % block:
        raise FormatError(name, f"K={k} is not a multiple of {block}; Marlin group-{block} scales need whole groups")
    want = (-(-n // block), k // block)
    if tuple(scale.shape) != want:
        raise FormatError(name, f"block scale shape {tuple(scale.shape)} does not fit [{n}, {k}] (expected {want})")
    return scale.repeat_interleave(block, dim=0)[:n].t().contiguous()


def channel_scales_to_groups(scale: torch.Tensor, n: int, name: str | None = None) -> torch.Tensor:
    """Per-row scales ``[N]`` -> Marlin per-channel input ``[1, N]``."""
    if tuple(scale.shape) != (n,):
        raise FormatError(name, f"channel scale shape {tuple(scale.shape)} does not fit N={n}")
    return scale.reshape(1, n).contiguous()


def expert_scales_to_groups(scale: torch.Tensor) -> torch.Tensor:
    """Per-expert ``[E, N, K/32]`` -> ``[E, K/32, N]``."""
    return scale.transpose(1, 2).contiguous()


def gptq_unpack(words: torch.Tensor, num_bits: int) -> torch.Tensor:
    """Inverse of the GPTQ packing, written independently of the packers above (tests use
    it): int32 ``[K/p, N]`` -> unsigned codes ``[N, K]`` as int32."""
    p = 32 // num_bits
    mask = (1 << num_bits) - 1
    w = words.to(torch.int64) & 0xFFFFFFFF
    shifts = torch.arange(p, dtype=torch.int64) * num_bits
    codes = (w.unsqueeze(1) >> shifts.view(1, p, 1)) & mask   # [K/p, p, N]
    return codes.reshape(-1, words.shape[1]).t().contiguous().to(torch.int32)
