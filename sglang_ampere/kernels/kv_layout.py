"""SGLang 0.5.23's paged FP8 KV cache for DeepSeek-V4 (``KVLayout.V4``): constants and a codec.

One token is one 512-wide row (448 "NoPE" + 64 RoPE values) that is both K and V. In the cache
a token takes 584 bytes, split over two places in its page (block-split layout)::

    page p, slot s, page size P, page stride S (bytes, ``stride(0)`` of the pool view):
      data  row at p*S + s*576        : 448 x e4m3fn NoPE values, then 64 x bf16 RoPE (LE)
      scale row at p*S + P*576 + s*8  : 7 x UE8M0 (one per 64 NoPE values, in order), 1 pad

    value[i] = e4m3(data[i]) * 2^(scale[i // 64] - 127)      i < 448
    value[448 + j] = bf16(data[448 + 2j : 450 + 2j])         j < 64

Page sizes: 256 tokens (sliding-window cache), 64 (ratio-4 compressed cache), 2 (ratio-128
compressed cache); a page is padded to a multiple of 576 bytes. The pools are ``uint8``
``[num_pages, page_bytes]`` tensors; the attention backend hands kernels the view
``buf[:, :P*584].view(num_pages, P, 1, 584)`` (dtype float8_e4m3fn).

:func:`encode_rows` / :func:`write_rows` are an encoder of this layout written from SGLang's
writer rules (``fused_store_flashmla_cache``: scale = max(1e-4, amax)/448 rounded *up* to a
power of two, values clipped to +-448 and rounded to e4m3fn). The tests use it to build caches
that the kernels' integer decoder must read back; it uses torch's FP8 conversion, the kernels
do not, so the two are independent.

The C4 indexer's key cache (``IndexKLayout`` below) is a separate pool: pages of 64 index
entries, each a 128-wide key in e4m3fn with one float32 scale::

    page p (8448 bytes, contiguous):  64 x 128 e4m3fn key bytes (entry-major), then
                                      64 x float32 scales (little-endian), entry order
    key[p, j, d] = e4m3(byte[p*8448 + j*128 + d]) * f32(bytes[p*8448 + 8192 + 4j : +4])

SGLang hands it to the indexer as a ``[pages, 64, 1, 132]`` view of those bytes (the view's
inner shape is only a reshaping of the page: row j of the view is *not* entry j).
"""

from __future__ import annotations

import torch

from ..formats.constants import E4M3_BIAS, E4M3_MAX, E8M0_BIAS

NOPE_DIM = 448
ROPE_DIM = 64
HEAD_DIM = NOPE_DIM + ROPE_DIM                      # 512
QUANT_GROUP = 64                                     # NoPE values per UE8M0 scale
NUM_SCALES = NOPE_DIM // QUANT_GROUP                 # 7
DATA_ROW_BYTES = NOPE_DIM + 2 * ROPE_DIM             # 576
SCALE_ROW_BYTES = NUM_SCALES + 1                     # 8 (last byte is padding)
TOKEN_BYTES = DATA_ROW_BYTES + SCALE_ROW_BYTES       # 584
PAGE_ALIGN = DATA_ROW_BYTES                          # page stride is a multiple of 576
SWA_PAGE_SIZE = 256
C4_PAGE_SIZE = 64
C128_PAGE_SIZE = 2
#: C4 indexer key cache (see the module docstring).
INDEX_DIM = 128
INDEX_PAGE_SIZE = 64
INDEX_ENTRY_BYTES = INDEX_DIM + 4                    # 132: key bytes + one float32 scale
INDEX_PAGE_BYTES = INDEX_PAGE_SIZE * INDEX_ENTRY_BYTES   # 8448
INDEX_SCALE_OFFSET = INDEX_PAGE_SIZE * INDEX_DIM         # 8192
#: Smallest group absmax the writer uses (so an all-zero group gets a finite scale).
AMAX_FLOOR = 1e-4


def page_bytes(page_size: int) -> int:
    """Bytes of one page of a pool holding ``page_size`` tokens (SGLang pads to 576)."""
    raw = page_size * TOKEN_BYTES
    return -(-raw // PAGE_ALIGN) * PAGE_ALIGN


def new_pool(num_pages: int, page_size: int, device=None) -> torch.Tensor:
    """A zeroed pool buffer ``[num_pages, page_bytes]`` uint8, as SGLang allocates it."""
    return torch.zeros(num_pages, page_bytes(page_size), dtype=torch.uint8, device=device)


def pool_view(buf: torch.Tensor, page_size: int) -> torch.Tensor:
    """The 4-D float8 view the attention backend passes as ``k_cache`` / ``extra_k_cache``."""
    if buf.dtype != torch.uint8 or buf.ndim != 2 or buf.shape[1] < page_size * TOKEN_BYTES:
        raise ValueError(
            f"expected a uint8 pool [pages, >= {page_size * TOKEN_BYTES}] bytes, got "
            f"{tuple(buf.shape)} {buf.dtype}; build it with new_pool(num_pages, page_size)")
    return buf[:, : page_size * TOKEN_BYTES].view(torch.float8_e4m3fn).view(
        buf.shape[0], page_size, 1, TOKEN_BYTES)


def ue8m0_scale_bytes(amax: torch.Tensor) -> torch.Tensor:
    """Writer rule: byte of 2^ceil(log2(max(1e-4, amax) / 448)), from the float32 bits."""
    scale = torch.clamp(amax.float(), min=AMAX_FLOOR) / E4M3_MAX
    bits = scale.view(torch.int32)
    exp = (bits >> 23) & 0xFF
    mant = bits & 0x7FFFFF
    return (exp + (mant != 0).to(torch.int32)).to(torch.uint8)


def encode_rows(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``[n, 512]`` rows (any float dtype; the RoPE part is stored as bf16) ->
    (data ``[n, 576]`` uint8, scale ``[n, 8]`` uint8)."""
    if rows.ndim != 2 or rows.shape[1] != HEAD_DIM:
        raise ValueError(f"expected rows [n, {HEAD_DIM}], got {tuple(rows.shape)}")
    n = rows.shape[0]
    nope = rows[:, :NOPE_DIM].float().reshape(n, NUM_SCALES, QUANT_GROUP)
    sbytes = ue8m0_scale_bytes(nope.abs().amax(-1))                       # [n, 7]
    scale = torch.ldexp(torch.ones_like(nope[..., 0]), sbytes.to(torch.int32) - E8M0_BIAS)
    q = (nope / scale[..., None]).clamp(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn)
    rope = rows[:, NOPE_DIM:].to(torch.bfloat16).contiguous().view(torch.uint8)   # [n, 128]
    data = torch.cat([q.view(torch.uint8).reshape(n, NOPE_DIM), rope], dim=1)
    scale_row = torch.cat([sbytes, torch.zeros(n, 1, dtype=torch.uint8, device=rows.device)], 1)
    return data, scale_row


def write_rows(buf: torch.Tensor, slots: torch.Tensor, rows: torch.Tensor, page_size: int) -> None:
    """Store ``rows[i]`` at flat slot ``slots[i]`` (= page * page_size + offset) of ``buf``."""
    data, scale = encode_rows(rows)
    slots = slots.long().to(buf.device)
    page, off = slots // page_size, slots % page_size
    cols = torch.arange(DATA_ROW_BYTES, device=buf.device)
    buf[page[:, None], (off * DATA_ROW_BYTES)[:, None] + cols] = data.to(buf.device)
    cols = torch.arange(SCALE_ROW_BYTES, device=buf.device)
    base = page_size * DATA_ROW_BYTES
    buf[page[:, None], base + (off * SCALE_ROW_BYTES)[:, None] + cols] = scale.to(buf.device)


def read_rows_reference(buf: torch.Tensor, slots: torch.Tensor, page_size: int) -> torch.Tensor:
    """Float32 ``[n, 512]`` rows at ``slots``, decoded with torch's own FP8 conversion.

    A test oracle: independent of the kernels' integer decoder.
    """
    slots = slots.long().to(buf.device)
    page, off = slots // page_size, slots % page_size
    cols = torch.arange(DATA_ROW_BYTES, device=buf.device)
    data = buf[page[:, None], (off * DATA_ROW_BYTES)[:, None] + cols]
    cols = torch.arange(NUM_SCALES, device=buf.device)
    sb = buf[page[:, None], page_size * DATA_ROW_BYTES + (off * SCALE_ROW_BYTES)[:, None] + cols]
    nope = data[:, :NOPE_DIM].view(torch.float8_e4m3fn).float().reshape(-1, NUM_SCALES, QUANT_GROUP)
    scale = sb.view(torch.float8_e8m0fnu).float()
    rope = data[:, NOPE_DIM:].contiguous().view(torch.bfloat16).float()
    return torch.cat([(nope * scale[..., None]).reshape(-1, NOPE_DIM), rope], dim=1)


def e4m3_bits_to_float(b: torch.Tensor) -> torch.Tensor:
    """Raw e4m3fn bytes (uint8, any shape) -> float32 with integer operations only.

    Sign ``s``, exponent ``e`` (4 bits, bias 7), mantissa ``m`` (3 bits): ``e > 0`` gives the
    float32 with bits ``s | (e + 120) << 23 | m << 20``; ``e == 0`` gives ``m * 2^-9``. This
    is what the kernels do on sm_86, which has no FP8 instructions (NaN bytes 0x7F/0xFF, which
    no writer produces, decode to 480).
    """
    i = b.to(torch.int32)
    e = (i >> 3) & 0xF
    mant = i & 0x7
    normal = ((e + (E8M0_BIAS - E4M3_BIAS)) << 23) | (mant << 20)
    mag = torch.where(e > 0, normal.view(torch.float32), mant.to(torch.float32) * 2.0**-9)
    return torch.where((i & 0x80) != 0, -mag, mag)


def capturing(device: torch.device) -> bool:
    """A CUDA graph is being captured on ``device``'s current stream (no data-dependent sizes,
    no host syncs, no allocation meant to outlive the graph)."""
    return device.type == "cuda" and torch.cuda.is_current_stream_capturing()


_E4M3_TABLES: dict[torch.device, torch.Tensor] = {}


def e4m3_bytes_to_float(b: torch.Tensor) -> torch.Tensor:
    """:func:`e4m3_bits_to_float`, by a lookup in its 256 values (the same bits; about 4x faster
    on a CPU, where the torch sparse-MLA path decodes every gathered KV row with it)."""
    table = _E4M3_TABLES.get(b.device)
    if table is None:
        if capturing(b.device):
            return e4m3_bits_to_float(b)     # no table made inside a CUDA graph's memory pool
        table = _E4M3_TABLES[b.device] = e4m3_bits_to_float(torch.arange(256, dtype=torch.uint8, device=b.device))
    return torch.take(table, b.long())


def index_pool(num_pages: int, device=None) -> torch.Tensor:
    """A zeroed indexer key pool ``[num_pages, 64, 1, 132]`` uint8 (the view SGLang passes)."""
    return torch.zeros(num_pages, INDEX_PAGE_SIZE, 1, INDEX_ENTRY_BYTES, dtype=torch.uint8, device=device)


def index_pool_pages(pool: torch.Tensor) -> torch.Tensor:
    """The ``[pages, 8448]`` uint8 view (no copy) of an index-K pool view ``[pages, 64, 1, 132]``.

    Each page's 8448 bytes must be contiguous; the page stride may be larger (its ``stride(0)``).
    """
    c = pool.view(torch.uint8)
    want = (INDEX_PAGE_SIZE, 1, INDEX_ENTRY_BYTES)
    if c.ndim != 4 or tuple(c.shape[1:]) != want or c.stride(1) != INDEX_ENTRY_BYTES or c.stride(3) != 1:
        raise ValueError(f"expected the index-K pool view [pages, 64, 1, 132] with {INDEX_PAGE_BYTES} "
                         f"contiguous bytes per page, got {tuple(c.shape)} with strides {c.stride()}")
    stride = c.stride(0) if c.shape[0] > 1 else INDEX_PAGE_BYTES
    if stride < INDEX_PAGE_BYTES:
        raise ValueError(f"index-K pool pages overlap: page stride {stride} < {INDEX_PAGE_BYTES} bytes")
    return torch.as_strided(c, (c.shape[0], INDEX_PAGE_BYTES), (stride, 1), c.storage_offset())


def write_index_keys(pool: torch.Tensor, slots: torch.Tensor, keys: torch.Tensor) -> None:
    """Store ``keys [n, 128]`` (any float dtype) at flat entries ``slots`` (= page * 64 + j).

    Each key gets scale = max(amax, 1e-4) / 448 (float32) and e4m3fn values of
    ``key * (1 / scale)`` (the float32 reciprocal, then the product), rounded by torch,
    independent of the kernels' integer decoder. SGLang's two index-key writers multiply by the
    reciprocal (``fused_norm_rope_v2.cuh:208-217``, ``store.cuh:175-184``); dividing by the
    scale instead rounds to a different byte for about 2 values in 10^7 (e.g. 432.0 vs
    431.99997 at a 416/448 tie).
    """
    if keys.ndim != 2 or keys.shape[1] != INDEX_DIM:
        raise ValueError(f"expected keys [n, {INDEX_DIM}], got {tuple(keys.shape)}")
    flat = pool.view(torch.uint8).reshape(pool.shape[0], INDEX_PAGE_BYTES)
    k = keys.float()
    scale = torch.clamp(k.abs().amax(-1), min=AMAX_FLOOR) / E4M3_MAX
    inv_scale = 1.0 / scale
    q = (k * inv_scale[:, None]).clamp(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn).view(torch.uint8)
    slots = slots.long().to(pool.device)
    page, j = slots // INDEX_PAGE_SIZE, slots % INDEX_PAGE_SIZE
    cols = torch.arange(INDEX_DIM, device=pool.device)
    flat[page[:, None], (j * INDEX_DIM)[:, None] + cols] = q.to(pool.device)
    cols = torch.arange(4, device=pool.device)
    sbytes = scale.contiguous().view(torch.uint8).reshape(-1, 4)
    flat[page[:, None], INDEX_SCALE_OFFSET + (j * 4)[:, None] + cols] = sbytes.to(pool.device)


def read_index_keys_reference(pool: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(keys ``[pages, 64, 128]`` float32 decoded by torch's FP8 conversion, scales ``[pages, 64]``).

    A test oracle, independent of the integer decoder.
    """
    flat = pool.view(torch.uint8).reshape(pool.shape[0], INDEX_PAGE_BYTES)
    keys = flat[:, :INDEX_SCALE_OFFSET].contiguous().view(torch.float8_e4m3fn).float()
    scales = flat[:, INDEX_SCALE_OFFSET:].contiguous().view(torch.float32)
    return keys.reshape(-1, INDEX_PAGE_SIZE, INDEX_DIM), scales.reshape(-1, INDEX_PAGE_SIZE)
