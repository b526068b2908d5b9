"""TileLang sparse-MLA kernels for sm_86 / sm_80 (BF16 tensor cores, integer FP8 decode).

Contract: :mod:`sglang_ampere.kernels.sparse_mla` (module docstring). This module holds the
kernel builder, the launch wrappers and the tile plan; the torch path there is the reference.

Tile plan (per CTA: one query token, ``heads_per_cta`` heads, one split of its candidates)::

    Q_s   [HB, 512] bf16   shared   the token's query rows (loaded once)
    KV_s  [BI, 512] bf16   shared   BI gathered candidate rows (dense: copied; paged: decoded
                                    from FP8 + UE8M0 with integer ops, RoPE half copied)
    P_s   [HB, BI]  bf16   shared   softmax numerators, A operand of the second GEMM
    S     [HB, BI]  fp32   regs     S = Q_s . KV_s^T            (mma.m16n8k16 bf16 -> fp32)
    O     [HB, 512] fp32   regs     O = O * alpha + P_s . KV_s  (mma.m16n8k16 bf16 -> fp32)

sm_86 (99 KB shared per block): HB = 32, BI = 32, 256 threads -> 32 + 32 + 2 KB shared and 64
fp32 accumulator registers per thread; a 64-head layer runs as 2 head blocks. sm_80 (163 KB)
runs the same plan (:data:`PLANS`; its larger shared memory is not used). Candidates are walked
in blocks of BI (window list first, then the compressed list); with ``num_splits`` > 1 (decode:
few tokens, so split the candidates across CTAs, block b goes to split b % num_splits) each CTA
writes a normalised fp32 partial and its log2-sum-exp, and :func:`_combine` merges them with the
sink. With ``num_splits`` == 1 (prefill: many tokens) the CTA folds the sink and writes bf16
directly.

Work is bounded by the lengths (``topk_length``/``extra_topk_length``), never by the list
widths, so a c128 list padded to 8192 columns costs nothing past its length.
"""


import functools
from dataclasses import dataclass

import torch

from . import kv_layout as L
from .tilelang_build import AMPERE_PASS_CONFIGS, compile_prim, device_arch, plan_for_arch
from .tilelang_build import target_for as target_for  # re-exported: kernel-report reads M.target_for

LOG2E = 1.4426950408889634
_NEG = -1.0e30            # "minus infinity" that stays finite (no inf arithmetic in the kernel)
NOPE = L.NOPE_DIM
DIM = L.HEAD_DIM


@dataclass(frozen=True)
class TilePlan:
    heads_per_cta: int = 32
    block_i: int = 32
    threads: int = 256

    def shared_bytes(self) -> int:
        return 2 * (self.heads_per_cta * DIM + self.block_i * DIM + self.heads_per_cta * self.block_i)


#: Tile plan per architecture (compute capability major*10+minor).
PLANS = {86: TilePlan(32, 32, 256), 80: TilePlan(32, 32, 256)}
#: Split counts the decode kernel is compiled for.
SPLITS = (1, 2, 4, 8, 16)


def plan_for(arch: int) -> TilePlan:
    """The tile plan for ``sm_{arch}`` (see :func:`.tilelang_build.plan_for_arch`)."""
    return plan_for_arch(PLANS, arch, "sparse-MLA")


@dataclass(frozen=True)
class KernelSpec:
    """Everything a compiled kernel is specialised on."""
    paged: bool
    heads: int = 64
    num_splits: int = 1
    sm_scale: float = DIM ** -0.5
    plan: TilePlan = PLANS[86]
    # paged only: (page size, page stride bytes) of the window cache and of the extra cache
    page1: tuple[int, int] = (L.SWA_PAGE_SIZE, L.page_bytes(L.SWA_PAGE_SIZE))
    page2: tuple[int, int] | None = None

    @property
    def name(self) -> str:
        kind = "prefill" if self.num_splits == 1 else f"decode_s{self.num_splits}"
        if not self.paged:
            return f"sparse_mla_dense_{kind}_h{self.heads}"
        extra = "swa" if self.page2 is None else {64: "c4", 2: "c128"}.get(self.page2[0], f"p{self.page2[0]}")
        return f"sparse_mla_paged_{extra}_{kind}_h{self.heads}"


def build(spec: KernelSpec):
    """The TileLang ``prim_func`` for ``spec`` (importing TileLang only here)."""
    import tilelang.language as T

    BF16, FP32, I32, U8 = "bfloat16", "float32", "int32", "uint8"
    HB, BI, threads = spec.plan.heads_per_cta, spec.plan.block_i, spec.plan.threads
    H, NS = spec.heads, spec.num_splits
    if H % HB:
        HB = 16 if H % 16 == 0 else 0
    if HB == 0:
        raise ValueError(f"the TileLang kernel needs a head count that is a multiple of 16, got {H}")
    n_hblk = H // HB
    sc = float(spec.sm_scale) * LOG2E          # scores in the log2 domain
    dual = spec.paged and spec.page2 is not None

    ntok = T.dynamic("num_tokens")
    w1 = T.dynamic("width1")
    w2 = T.dynamic("width2")
    if spec.paged:
        nb1 = T.dynamic("cache_bytes1")
        nb2 = T.dynamic("cache_bytes2")
        ps1, st1 = spec.page1
        ps2, st2 = spec.page2 if dual else (1, 1)
    else:
        nrows = T.dynamic("kv_rows")

    if NS == 1:
        out_shapes = ((ntok, H, DIM), (ntok, H))
        out_dtypes = (BF16, FP32)
    else:
        out_shapes = ((ntok, NS, H, DIM), (ntok, NS, H))
        out_dtypes = (FP32, FP32)

    @T.macro
    def decode_paged(C, slot_s, KV_s, ps, st):
        # e4m3 byte b, scale byte s: value = (+-)(1.m * 2^(e-7) or m * 2^-9) * 2^(s-127), all
        # built from integer bit fields (no FP8 instruction exists on sm_86).
        for j, d in T.Parallel(BI, NOPE):
            slot = slot_s[j]
            base = T.Cast("int64", slot // ps) * st
            b = T.Cast("uint32", C[base + (slot % ps) * L.DATA_ROW_BYTES + d])
            s = T.Cast("uint32", C[base + ps * L.DATA_ROW_BYTES + (slot % ps) * L.SCALE_ROW_BYTES + d // L.QUANT_GROUP])
            e = (b >> T.uint32(3)) & T.uint32(15)
            m = b & T.uint32(7)
            mag = T.if_then_else(
                e > T.uint32(0),
                T.reinterpret(FP32, ((e + T.uint32(120)) << T.uint32(23)) | (m << T.uint32(20))),
                T.Cast(FP32, m) * T.float32(2.0 ** -9))
            scale = T.if_then_else(s > T.uint32(0), T.reinterpret(FP32, s << T.uint32(23)),
                                   T.float32(2.0 ** -127))
            val = T.if_then_else((b & T.uint32(128)) > T.uint32(0), -mag, mag) * scale
            KV_s[j, d] = T.Cast(BF16, val)
        for j, r in T.Parallel(BI, L.ROPE_DIM):
            slot = slot_s[j]
            a = T.Cast("int64", slot // ps) * st + (slot % ps) * L.DATA_ROW_BYTES + NOPE + 2 * r
            bits = T.Cast("uint32", C[a]) | (T.Cast("uint32", C[a + 1]) << T.uint32(8))
            KV_s[j, NOPE + r] = T.reinterpret(BF16, T.Cast("uint16", bits))

    def slot_loader(width, bound, ps, st, is_paged):
        # A list's dynamic sizes (its width, the cache's bytes or rows) are closed over, never
        # passed as macro parameters: TileLang renames a dynamic size to the macro parameter it is
        # bound to, so one macro called for list 1 and list 2 would give the kernel two parameters
        # named ``width`` and two named ``bound`` (TileLang's NVRTC and cython launchers then pass
        # 12 arguments to a 14-parameter kernel). tilelang_build.duplicate_params checks this.
        @T.macro
        def load_slots(Idx, n_valid, blk, t, slot_s, ok_s):
            for j in T.Parallel(BI):
                pos = blk * BI + j
                raw = T.if_then_else(pos < n_valid, Idx[t, T.min(pos, width - 1)], -1)
                if is_paged:
                    inside = (T.Cast("int64", raw // ps) * st + ps * L.TOKEN_BYTES) <= bound
                else:
                    inside = raw < bound
                good = (raw >= 0) & inside
                slot_s[j] = T.if_then_else(good, raw, 0)
                ok_s[j] = T.if_then_else(good, 1, 0)

        return load_slots

    if spec.paged:
        load_slots1 = slot_loader(w1, nb1, ps1, st1, True)
        load_slots2 = slot_loader(w2, nb2, ps2, st2, True) if dual else None
    else:
        load_slots1 = slot_loader(w1, nrows, 1, 1, False)
        load_slots2 = None

    @T.macro
    def attend_block(Q_s, KV_s, P_s, ok_s, acc_s, acc_o, m_i, m_prev, alpha, l_i, l_blk):
        for h, j in T.Parallel(HB, BI):
            acc_s[h, j] = T.if_then_else(ok_s[j] > 0, T.float32(0), T.float32(_NEG))
        T.gemm(Q_s, KV_s, acc_s, transpose_B=True, policy=T.GemmWarpPolicy.FullRow)
        T.copy(m_i, m_prev)
        T.reduce_max(acc_s, m_i, dim=1, clear=False)
        for h in T.Parallel(HB):
            alpha[h] = T.exp2((m_prev[h] - m_i[h]) * sc)
        for h, j in T.Parallel(HB, BI):
            acc_s[h, j] = T.if_then_else(ok_s[j] > 0, T.exp2(acc_s[h, j] * sc - m_i[h] * sc), T.float32(0))
        T.reduce_sum(acc_s, l_blk, dim=1)
        for h in T.Parallel(HB):
            l_i[h] = l_i[h] * alpha[h] + l_blk[h]
        for h, d in T.Parallel(HB, DIM):
            acc_o[h, d] *= alpha[h]
        T.copy(acc_s, P_s)
        T.gemm(P_s, KV_s, acc_o, policy=T.GemmWarpPolicy.FullRow)

    @T.macro
    def finish(acc_o, m_i, l_i, Sink, Out, Lse, t, h0, sp, fac):
        if NS == 1:
            for h in T.Parallel(HB):
                ms = m_i[h] * sc
                sk = Sink[h0 + h] * LOG2E
                big = T.max(ms, sk)
                w = T.exp2(ms - big)
                den = l_i[h] * w + T.exp2(sk - big)
                fac[h] = T.if_then_else(l_i[h] > 0, w / den, T.float32(0))
                Lse[t, h0 + h] = T.if_then_else(l_i[h] > 0, (ms + T.log2(l_i[h])) / LOG2E, T.infinity(FP32))
            for h, d in T.Parallel(HB, DIM):
                Out[t, h0 + h, d] = T.Cast(BF16, acc_o[h, d] * fac[h])
        else:
            for h in T.Parallel(HB):
                fac[h] = T.if_then_else(l_i[h] > 0, 1.0 / l_i[h], T.float32(0))
                Lse[t, sp, h0 + h] = T.if_then_else(l_i[h] > 0, m_i[h] * sc + T.log2(l_i[h]), T.float32(_NEG))
            for h, d in T.Parallel(HB, DIM):
                Out[t, sp, h0 + h, d] = acc_o[h, d] * fac[h]

    @T.macro
    def body(Q, Idx1, Len1, Idx2, Len2, Sink, Out, Lse, src1, src2):
        with T.Kernel(ntok, n_hblk, NS, threads=threads) as (t, hb, sp):
            Q_s = T.alloc_shared((HB, DIM), BF16)
            KV_s = T.alloc_shared((BI, DIM), BF16)
            P_s = T.alloc_shared((HB, BI), BF16)
            slot_s = T.alloc_shared((BI,), I32)
            ok_s = T.alloc_shared((BI,), I32)
            acc_s = T.alloc_fragment((HB, BI), FP32)
            acc_o = T.alloc_fragment((HB, DIM), FP32)
            m_i = T.alloc_fragment((HB,), FP32)
            m_prev = T.alloc_fragment((HB,), FP32)
            alpha = T.alloc_fragment((HB,), FP32)
            l_i = T.alloc_fragment((HB,), FP32)
            l_blk = T.alloc_fragment((HB,), FP32)
            fac = T.alloc_fragment((HB,), FP32)
            h0 = hb * HB
            T.copy(Q[t, h0:h0 + HB, :], Q_s)
            T.fill(acc_o, 0)
            T.fill(l_i, 0)
            T.fill(m_i, _NEG)
            n1 = T.max(T.min(Len1[t], w1), 0)
            nblk1 = T.ceildiv(n1, BI)
            if dual:
                n2 = T.max(T.min(Len2[t], w2), 0)
                nblk = nblk1 + T.ceildiv(n2, BI)
            else:
                n2 = 0
                nblk = nblk1
            for it in T.serial(T.ceildiv(T.max(nblk - sp, 0), NS)):
                blk = sp + it * NS
                if blk < nblk1:
                    load_slots1(Idx1, n1, blk, t, slot_s, ok_s)
                    if spec.paged:
                        decode_paged(src1, slot_s, KV_s, ps1, st1)
                    else:
                        for j, d in T.Parallel(BI, DIM):
                            KV_s[j, d] = src1[slot_s[j], d]
                else:
                    if dual:
                        load_slots2(Idx2, n2, blk - nblk1, t, slot_s, ok_s)
                        decode_paged(src2, slot_s, KV_s, ps2, st2)
                attend_block(Q_s, KV_s, P_s, ok_s, acc_s, acc_o, m_i, m_prev, alpha, l_i, l_blk)
            finish(acc_o, m_i, l_i, Sink, Out, Lse, t, h0, sp, fac)

    if not spec.paged:
        @T.prim_func
        def sparse_mla_dense(Q: T.Tensor((ntok, H, DIM), BF16), KV: T.Tensor((nrows, DIM), BF16),
                             Idx1: T.Tensor((ntok, w1), I32), Len1: T.Tensor((ntok,), I32),
                             Sink: T.Tensor((H,), FP32),
                             Out: T.Tensor(out_shapes[0], out_dtypes[0]), Lse: T.Tensor(out_shapes[1], out_dtypes[1])):
            body(Q, Idx1, Len1, None, None, Sink, Out, Lse, KV, None)
        return sparse_mla_dense

    if not dual:
        @T.prim_func
        def sparse_mla_paged1(Q: T.Tensor((ntok, H, DIM), BF16), C1: T.Tensor((nb1,), U8),
                              Idx1: T.Tensor((ntok, w1), I32), Len1: T.Tensor((ntok,), I32),
                              Sink: T.Tensor((H,), FP32),
                              Out: T.Tensor(out_shapes[0], out_dtypes[0]), Lse: T.Tensor(out_shapes[1], out_dtypes[1])):
            body(Q, Idx1, Len1, None, None, Sink, Out, Lse, C1, None)
        return sparse_mla_paged1

    @T.prim_func
    def sparse_mla_paged2(Q: T.Tensor((ntok, H, DIM), BF16), C1: T.Tensor((nb1,), U8),
                          Idx1: T.Tensor((ntok, w1), I32), Len1: T.Tensor((ntok,), I32),
                          C2: T.Tensor((nb2,), U8), Idx2: T.Tensor((ntok, w2), I32), Len2: T.Tensor((ntok,), I32),
                          Sink: T.Tensor((H,), FP32),
                          Out: T.Tensor(out_shapes[0], out_dtypes[0]), Lse: T.Tensor(out_shapes[1], out_dtypes[1])):
        body(Q, Idx1, Len1, Idx2, Len2, Sink, Out, Lse, C1, C2)
    return sparse_mla_paged2


#: The shared Ampere-path switches (:mod:`.tilelang_build`). The one Hopper instruction left on
#: sm_90 is ``stmatrix`` (one STSM), which TileLang picks for the fragment -> shared copy of P
#: (same data movement as the sm_86 stores; no switch turns it off).
PASS_CONFIGS = dict(AMPERE_PASS_CONFIGS)


@functools.lru_cache(maxsize=None)
def compiled(spec: KernelSpec, arch: int):
    """JIT-compile ``spec`` for ``sm_{arch}`` (cached per process; TileLang also caches on disk)."""
    return compile_prim(build(spec), arch, PASS_CONFIGS)


# ---------------------------------------------------------------------------------------------
# Launch wrappers

def choose_splits(tokens: int, head_blocks: int, sms: int) -> int:
    """Enough CTAs to fill the GPU about twice; 1 (the prefill kernel) once tokens do that."""
    want = max(1, (2 * sms) // max(1, tokens * head_blocks))
    return max(s for s in SPLITS if s <= want)


def _combine(po: torch.Tensor, pl: torch.Tensor, sink: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Merge split partials (normalised fp32 outputs + log2-sum-exp) with the sink."""
    sk = (sink.float() * LOG2E)[None, :]                     # [1, H]
    big = torch.maximum(pl.amax(1), sk)                      # [T, H]
    w = torch.where(pl > _NEG / 2, torch.exp2(pl - big[:, None, :]), torch.zeros_like(pl))  # 0: empty split
    tot = w.sum(1)
    den = tot + torch.exp2(sk - big)
    den = torch.where(den > 0, den, torch.ones_like(den))   # no sink and nothing valid: out = 0
    out = (w[..., None] * po).sum(1) / den[..., None]
    lse = torch.where(tot > 0, (torch.log2(tot.clamp(min=1e-38)) + big) / LOG2E, torch.full_like(tot, float("inf")))
    return out, lse


@dataclass(frozen=True)
class Launch:
    """One kernel call, built on any device: the kernel to compile and its inputs in kernel order.

    :func:`dense_launch` / :func:`paged_launch` build it and :func:`run` allocates the outputs,
    calls a compiled kernel and merges split partials. The CUDA wrappers below and the CPU tile
    tests (``tests/helpers/tile_cpu``, which compile the same :func:`build` for TileLang's CPU
    target) go through these three functions, so both launch the kernel with the same arguments.
    """
    spec: KernelSpec
    args: tuple            # inputs, in the prim_func's order (the outputs Out, Lse follow)
    tokens: int


def _splits(num_splits, tokens: int, heads: int, plan: TilePlan, sms) -> int:
    if num_splits:
        return int(num_splits)
    if sms is None:
        raise ValueError("give num_splits or the device's SM count (sms) to choose it")
    return choose_splits(tokens, max(1, heads // plan.heads_per_cta), sms)


def _sink_and_lengths(attn_sink, topk_len, T_: int, H: int, width: int, device):
    sink = (torch.full((H,), _NEG, device=device) if attn_sink is None
            else attn_sink.to(device=device, dtype=torch.float32).contiguous())
    lens = (torch.full((T_,), width, dtype=torch.int32, device=device) if topk_len is None
            else topk_len.to(device=device, dtype=torch.int32).contiguous())
    return sink, lens


def _require_cuda(q: torch.Tensor) -> None:
    if q.device.type != "cuda":
        raise RuntimeError("the TileLang sparse-MLA kernels run on CUDA only; use the torch path "
                           "(SGLANG_AMPERE_PREFILL_BACKEND/SGLANG_AMPERE_DECODE_BACKEND=torch) elsewhere")


def _flat_bytes(k_cache: torch.Tensor) -> tuple[torch.Tensor, int, int]:
    """The pool view's bytes as one contiguous 1-D uint8 tensor + (page size, page stride)."""
    c = k_cache.view(torch.uint8)
    if c.ndim != 4 or c.shape[-1] != L.TOKEN_BYTES or c.stride(1) != L.TOKEN_BYTES:
        raise ValueError(f"expected the DeepSeek-V4 pool view [pages, page_size, 1, 584], got "
                         f"{tuple(c.shape)} with strides {c.stride()}")
    P, ps = c.shape[0], c.shape[1]
    st = c.stride(0) if P > 1 else L.page_bytes(ps)
    n = (P - 1) * c.stride(0) + ps * L.TOKEN_BYTES if P > 1 else ps * L.TOKEN_BYTES
    return torch.as_strided(c, (n,), (1,), c.storage_offset()), ps, st


def dense_launch(q, kv, indices, attn_sink, sm_scale, topk_length=None, *, plan: TilePlan,
                 num_splits: int | None = None, sms: int | None = None) -> Launch:
    """The dense kernel's spec and arguments for ``sparse_mla_torch``'s arguments (any device).

    ``num_splits`` None: :func:`choose_splits` for a device with ``sms`` multiprocessors.
    """
    device = q.device
    kv2 = kv.reshape(kv.shape[0], kv.shape[-1]).to(torch.bfloat16).contiguous()
    idx = indices.reshape(indices.shape[0], indices.shape[-1]).to(torch.int32).contiguous()
    T_, H, D = q.shape
    if D != DIM or kv2.shape[1] != DIM:
        raise ValueError(
            f"the TileLang kernel is built for {DIM}-wide rows; got q {tuple(q.shape)}, kv {tuple(kv.shape)}"
        )
    sink, lens = _sink_and_lengths(attn_sink, topk_length, T_, H, idx.shape[1], device)
    spec = KernelSpec(paged=False, heads=H, num_splits=_splits(num_splits, T_, H, plan, sms),
                      sm_scale=float(sm_scale), plan=plan)
    return Launch(spec, (q.to(torch.bfloat16).contiguous(), kv2, idx, lens, sink), T_)


def paged_launch(q, k_cache, indices, topk_length, attn_sink, sm_scale, extra_k_cache=None,
                 extra_indices=None, extra_topk_length=None, *, plan: TilePlan,
                 num_splits: int | None = None, sms: int | None = None) -> Launch:
    """The paged kernel's spec and arguments for a FlashMLA-shaped call (any device).

    The page size and page stride of each cache come from its pool view ``[pages, page_size, 1,
    584]`` (:func:`_flat_bytes`); ``num_splits`` as in :func:`dense_launch`.
    """
    device = q.device
    if q.ndim != 4 or q.shape[1] != 1:
        raise ValueError(f"q must be [tokens, 1, heads, 512], got {tuple(q.shape)}")
    q3 = q[:, 0].to(torch.bfloat16).contiguous()
    T_, H, _ = q3.shape
    idx1 = indices.reshape(T_, indices.shape[-1]).to(torch.int32).contiguous()
    sink, len1 = _sink_and_lengths(attn_sink, topk_length, T_, H, idx1.shape[1], device)
    c1, ps1, st1 = _flat_bytes(k_cache)
    args = [q3, c1, idx1, len1]
    page2 = None
    if extra_k_cache is not None:
        idx2 = extra_indices.reshape(T_, extra_indices.shape[-1]).to(torch.int32).contiguous()
        _, len2 = _sink_and_lengths(None, extra_topk_length, T_, H, idx2.shape[1], device)
        c2, ps2, st2 = _flat_bytes(extra_k_cache)
        page2 = (ps2, st2)
        args += [c2, idx2, len2]
    spec = KernelSpec(paged=True, heads=H, num_splits=_splits(num_splits, T_, H, plan, sms),
                      sm_scale=float(sm_scale), plan=plan, page1=(ps1, st1), page2=page2)
    return Launch(spec, (*args, sink), T_)


def run(launch: Launch, kernel) -> tuple[torch.Tensor, torch.Tensor]:
    """Call a compiled ``kernel`` of ``launch.spec``: ``(out [T,H,512] bf16, lse [T,H] fp32)``.

    The outputs are allocated on the arguments' device; split partials are merged with the sink
    (:func:`_combine`).
    """
    spec, T_ = launch.spec, launch.tokens
    device = launch.args[0].device
    H = spec.heads
    sink = launch.args[-1]
    if spec.num_splits == 1:
        out = torch.empty(T_, H, DIM, dtype=torch.bfloat16, device=device)
        lse = torch.empty(T_, H, dtype=torch.float32, device=device)
        kernel(*launch.args, out, lse)
        return out, lse
    po = torch.empty(T_, spec.num_splits, H, DIM, dtype=torch.float32, device=device)
    pl = torch.empty(T_, spec.num_splits, H, dtype=torch.float32, device=device)
    kernel(*launch.args, po, pl)
    out, lse = _combine(po, pl, sink)
    return out.to(torch.bfloat16), lse


def sparse_mla_dense(q, kv, indices, attn_sink, sm_scale, topk_length=None, num_splits=None):
    """Dense-form contract of ``sparse_mla_torch`` on CUDA (q cast to bf16; output in q's dtype)."""
    _require_cuda(q)
    arch, sms = device_arch(q.device)
    launch = dense_launch(q, kv, indices, attn_sink, sm_scale, topk_length, plan=plan_for(arch),
                          num_splits=num_splits, sms=sms)
    if launch.tokens == 0:
        return torch.empty_like(q)
    out, _ = run(launch, compiled(launch.spec, arch))
    return out.to(q.dtype)


def sparse_mla_paged(q, k_cache, indices, topk_length, attn_sink, sm_scale, extra_k_cache=None,
                     extra_indices=None, extra_topk_length=None, num_splits=None):
    """FlashMLA-shaped paged call: returns ``(out [T,1,H,512] bf16, lse [T,H,1] fp32)``."""
    _require_cuda(q)
    arch, sms = device_arch(q.device)
    launch = paged_launch(q, k_cache, indices, topk_length, attn_sink, sm_scale, extra_k_cache,
                          extra_indices, extra_topk_length, plan=plan_for(arch), num_splits=num_splits, sms=sms)
    if launch.tokens == 0:
        return q.new_empty(0, 1, launch.spec.heads, DIM), torch.empty(0, launch.spec.heads, 1, device=q.device)
    out, lse = run(launch, compiled(launch.spec, arch))
    return out.unsqueeze(1), lse.unsqueeze(-1)


def report_specs(arch: int) -> list[KernelSpec]:
    """The kernels ``sglang-ampere kernel-report`` compiles: every code path (dense, paged with
    each cache combination; prefill epilogue and split-K decode epilogue). The split counts
    2..16 differ from the 8-split kernel only in one grid constant."""
    plan = plan_for(arch)
    swa = (L.SWA_PAGE_SIZE, L.page_bytes(L.SWA_PAGE_SIZE))
    c4 = (L.C4_PAGE_SIZE, L.page_bytes(L.C4_PAGE_SIZE))
    c128 = (L.C128_PAGE_SIZE, L.page_bytes(L.C128_PAGE_SIZE))
    return [
        KernelSpec(paged=False, num_splits=1, plan=plan),
        KernelSpec(paged=False, num_splits=8, plan=plan),
        KernelSpec(paged=True, num_splits=1, plan=plan, page1=swa, page2=c4),
        KernelSpec(paged=True, num_splits=8, plan=plan, page1=swa, page2=c4),
        KernelSpec(paged=True, num_splits=1, plan=plan, page1=swa, page2=c128),
        KernelSpec(paged=True, num_splits=8, plan=plan, page1=swa, page2=c128),
        KernelSpec(paged=True, num_splits=1, plan=plan, page1=swa, page2=None),
        KernelSpec(paged=True, num_splits=8, plan=plan, page1=swa, page2=None),
    ]


def serving_specs(arch: int, heads: int = 64) -> list[KernelSpec]:
    """Every paged kernel a DeepSeek-V4-Flash server can launch: each split count x each cache
    combination (window only, window + c4, window + c128), softmax scale 1/sqrt(512)."""
    plan = plan_for(arch)
    swa = (L.SWA_PAGE_SIZE, L.page_bytes(L.SWA_PAGE_SIZE))
    extras = (None, (L.C4_PAGE_SIZE, L.page_bytes(L.C4_PAGE_SIZE)),
              (L.C128_PAGE_SIZE, L.page_bytes(L.C128_PAGE_SIZE)))
    return [KernelSpec(paged=True, heads=heads, num_splits=ns, plan=plan, page1=swa, page2=e)
            for ns in SPLITS for e in extras]


def precompile(arch: int | None = None, heads: int = 64, log=None) -> int:
    """JIT-compile :func:`serving_specs` now (before CUDA-graph capture); returns the count.

    TileLang keeps the binaries in its disk cache (``~/.tilelang/cache``), so only the first
    start of a machine pays the ~10-20 s per kernel.
    """
    if arch is None:
        arch, _ = device_arch(torch.device("cuda"))
    specs = serving_specs(arch, heads)
    for spec in specs:
        compiled(spec, arch)
        if log:
            log(f"compiled {spec.name} for sm_{arch}")
    return len(specs)
