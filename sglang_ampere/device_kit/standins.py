"""Torch stand-ins for the kit's four Marlin modules: the runner's dry run on a machine without a GPU.

Each stand-in takes exactly the positional arguments the vendored SGLang wrapper passes to the
tvm-ffi module, and computes the result from them: the repack keeps the GPTQ words (reshaped
into the output buffer the wrapper allocated), the GEMMs un-permute the scales the way
``marlin_permute_scales`` permuted them (written here independently, from Marlin's published
permutation), decode the words per weight type and multiply; the MoE GEMM walks
``sorted_token_ids`` / ``expert_ids`` block by block, and the align fills those tables with the
``+1`` bucket convention and the ``[padded, inactive blocks]`` count. So the dry run exercises
the runner's layouts, SGLang's weight preparation (vendored), the align tables, top-k weighting
and the references; it does not exercise Marlin's own tile shuffle (only the GPU does).

``bug`` plants a deliberate error (tests use it as the negative control that must FAIL).
"""

from __future__ import annotations

import re
from types import SimpleNamespace

import torch

from ..formats import e2m1_decode
from ..quant.marlin_layout import gptq_unpack

#: Weight-type ids (sgl_kernel ScalarType.id) -> name; filled from kit.json by :func:`modules`.
BUGS = ("scale", "expert", "topk")
#: BF16 FP8 Marlin: the exponent bias SGLang folds into the scales (2 ** (2 ** 7 - 2 ** 3)).
FP8_BF16_EXPONENT_BIAS = 2.0 ** 120


def _scale_perms() -> tuple[list[int], list[int]]:
    grouped = [i + 8 * j for i in range(8) for j in range(8)]
    single = [2 * i + j for i in range(4) for j in (0, 1, 8, 9, 16, 17, 24, 25)]
    return grouped, single


def unpermute_scales(s: torch.Tensor, size_n: int) -> torch.Tensor:
    """Inverse of ``marlin_permute_scales`` on ``[groups, N]`` (grouped when groups > 1)."""
    grouped, single = _scale_perms()
    perm = grouped if s.shape[0] > 1 else single
    inv = torch.empty(len(perm), dtype=torch.long)
    inv[torch.tensor(perm)] = torch.arange(len(perm))
    return s.reshape(-1, len(perm))[:, inv.to(s.device)].reshape(-1, size_n)


class _Decoder:
    def __init__(self, type_ids: dict[str, int], bug: str | None):
        self.names = {v: k for k, v in type_ids.items()}
        self.bug = bug

    def weight(self, words: torch.Tensor, scales: torch.Tensor, type_id: int, size_k: int, size_n: int) -> torch.Tensor:
        """float32 ``[N, K]`` from GPTQ words ``[K/p, N]`` and Marlin-permuted scales."""
        name = self.names.get(int(type_id))
        bits = 8 if name in ("uint8b128", "float8_e4m3fn") else 4
        codes = gptq_unpack(words.reshape(size_k * bits // 32, size_n).cpu(), bits)        # [N, K] int32
        if name == "uint8b128":
            w = (codes - 128).float()
        elif name == "uint4b8":
            w = (codes - 8).float()
        elif name == "float8_e4m3fn":
            w = codes.to(torch.uint8).view(torch.float8_e4m3fn).float()
        elif name == "float4_e2m1f":
            w = e2m1_decode(codes)
        else:
            raise ValueError(f"stand-in: unknown weight type id {type_id}")
        s = scales
        if name == "float4_e2m1f":
            s = s.float().reshape(-1, 4)[:, [0, 2, 1, 3]].reshape(scales.shape)   # mxfp4_marlin_process_scales
        s = unpermute_scales(s.float().cpu(), size_n)                                 # [groups, N]
        if name == "float8_e4m3fn":
            s = s / FP8_BF16_EXPONENT_BIAS
        if self.bug == "scale":
            s = s * 1.05
        group = size_k // s.shape[0]
        return w * s.t().repeat_interleave(group, dim=1)


class RepackStandIn:
    def gptq_marlin_repack(self, b_q_weight, perm, out, size_k, size_n, num_bits):
        if out.numel() != b_q_weight.numel():
            raise ValueError(f"repack stand-in: {tuple(b_q_weight.shape)} does not fit {tuple(out.shape)}")
        out.copy_(b_q_weight.reshape(out.shape))


class GemmStandIn:
    def __init__(self, dec: _Decoder):
        self.dec = dec

    def gptq_marlin_gemm(self, a, b_q_weight, b_scales, global_scale, b_zeros, g_idx, perm, c, c_tmp, a_tmp,
                         workspace, b_q_type_id, is_k_full, use_atomic_add, use_fp32_reduce, is_zp_float):
        if use_atomic_add:
            raise ValueError("gemm stand-in: use_atomic_add=True is not the Ampere setting")
        size_m, size_k = a.shape
        size_n = c.shape[1]
        w = self.dec.weight(b_q_weight, b_scales, b_q_type_id, size_k, size_n).to(a.device)
        c.copy_((a.float() @ w.t()).to(c.dtype))


class MoeGemmStandIn:
    def __init__(self, dec: _Decoder, zero_inactive: bool):
        self.dec = dec
        self.zero_inactive = zero_inactive

    def moe_wna16_marlin_gemm(self, a, c, b_q_weight, b_bias, b_scales, global_scale, b_zeros, g_idx, perm,
                              workspace, sorted_token_ids, expert_ids, num_tokens_post_padded, topk_weights,
                              a_tmp, c_tmp, moe_block_size, top_k, mul_topk_weights, is_ep, b_q_type_id,
                              size_m, size_n, size_k, *rest):
        use_atomic_add = rest[-3]
        if use_atomic_add:
            raise ValueError("MoE stand-in: use_atomic_add=True is not the Ampere setting")
        padded = int(num_tokens_post_padded[0])
        n_rows = size_m * top_k
        weights = topk_weights.reshape(-1).float()
        cache: dict[int, torch.Tensor] = {}
        for b in range(padded // moe_block_size):
            e = int(expert_ids[b])
            ids = sorted_token_ids[b * moe_block_size:(b + 1) * moe_block_size].long()
            ids = ids[ids < n_rows]
            if e < 0:
                if self.zero_inactive:
                    c[ids] = 0
                continue
            if self.dec.bug == "expert":
                e = (e + 1) % b_q_weight.shape[0]
            if e not in cache:
                cache[e] = self.dec.weight(b_q_weight[e], b_scales[e], b_q_type_id, size_k, size_n).to(a.device)
            out = a[ids // top_k].float() @ cache[e].t()
            if mul_topk_weights and self.dec.bug != "topk":
                out = out * weights[ids].unsqueeze(1)
            c[ids] = out.to(c.dtype)


class AlignStandIn:
    def moe_align_block_size(self, topk_ids, num_buckets, block_size, sorted_ids, expert_ids, num_post, cumsum,
                             pad_sorted_token_ids):
        flat = topk_ids.reshape(-1).long() + 1                 # the +1 bucket convention: -1 -> bucket 0
        numel = flat.numel()
        sorted_ids.fill_(numel)
        pos, blk, inactive = 0, 0, 0
        for bucket in range(num_buckets):
            idx = torch.nonzero(flat == bucket).reshape(-1)
            if idx.numel() == 0:
                continue
            n_blocks = -(-idx.numel() // block_size)
            sorted_ids[pos:pos + idx.numel()] = idx.to(sorted_ids.dtype)
            expert_ids[blk:blk + n_blocks] = bucket - 1
            if bucket == 0:
                inactive += n_blocks
            pos += n_blocks * block_size
            blk += n_blocks
        num_post[0] = pos
        if num_post.numel() > 1:
            num_post[1] = inactive


def standin_for(name: str, type_ids: dict[str, int], bug: str | None = None):
    """The stand-in for the module SGLang names ``name`` (``sgl_kernel_jit_<op>_<template args>``)."""
    if bug is not None and bug not in BUGS:
        raise ValueError(f"bug must be one of {BUGS}, got {bug!r}")
    dec = _Decoder(type_ids, bug)
    if name.startswith("sgl_kernel_jit_gptq_marlin_repack"):
        return RepackStandIn()
    if name.startswith("sgl_kernel_jit_gptq_marlin_"):
        return GemmStandIn(dec)
    if name.startswith("sgl_kernel_jit_moe_wna16_marlin_"):
        flags = re.findall(r"_(true|false)", name)     # is_ep, has_bias, sorted, zero_inactive, prefix count
        if len(flags) != 5:
            raise ValueError(f"stand-in: unexpected MoE module name {name}")
        return MoeGemmStandIn(dec, zero_inactive=flags[3] == "true")
    if name.startswith("sgl_kernel_jit_moe_align_block_size_"):
        return AlignStandIn()
    raise ValueError(f"no stand-in for {name}")


def fake_device_properties(sms: int = 132):
    """What the wrappers read from ``torch.cuda.get_device_properties`` (for a CPU dry run)."""
    return SimpleNamespace(multi_processor_count=sms, name="dry-run", major=9, minor=0,
                           total_memory=80 * 2 ** 30)
