"""GPU checks: SGLang 0.5.23's real DeepSeek-V4 kernels against the torch stand-ins of
:mod:`.dsv4_ops_torch`, on DeepSeek-V4-Flash's shapes.

The stand-ins let SGLang's DeepSeek-V4 forward run on a CPU (issue 21); these checks are what
makes them a model of the GPU path: each runs SGLang's kernel (CUDA JIT, Triton or TileLang, as
SGLang dispatches it on this card) and the stand-in on the same inputs on the CUDA device and
compares the results. ``gpu_checks()`` returns ``[(name, check)]`` for ``sglang-ampere selftest``
(a provider in :data:`sglang_ampere.commands.selftest.PROVIDERS`) and ``tests/gpu/test_dsv4_ops_gpu.py``;
a check returns a one-line detail and raises :class:`~sglang_ampere.checking.CheckFailed` on a
mismatch (never ``assert``, so ``python -O`` cannot turn a failure into a pass).

Shapes: 64 heads of 512 (RoPE 64) for the attention query and the SWA cache (page 256), 64
indexer heads of 128, the c4 / c128 caches (pages 64 / 2) and the index-K cache (page 64),
``hc_mult`` 4 over hidden 4096, the shared expert's 2 x 2048 SwiGLU with limit 10; decode-like
(a few tokens) and prefill-like (hundreds) token counts.

The verdict, per output (:func:`compare`): every value within ``rel`` (one unit of the output
format's last place: bf16 2^-7, e4m3 2^-3) of the kernel's, *and* at most ``max_frac`` of the
values not bit-equal. The stand-ins round where the kernels round, so only float32 summation
order, contracted multiply-adds and fast-math ``exp`` / ``rsqrt`` separate them: that flips an
output rounding for a few values in 10^4. A stand-in with a wrong rounding point (say, the q
norm not rounded to bf16 before the RoPE) stays within one ulp everywhere but differs in
percents of the values, which the second bound catches.

Every check takes ``kernel=None`` (SGLang's function, loaded when the check runs) so the CPU
tests can hand it a deliberately wrong one; ``tokens`` scales the case down for them.
"""

from __future__ import annotations

import importlib
from typing import Callable, Optional

import torch

from ..checking import CheckFailed, require, require_cuda_sm80
from . import dsv4_ops_torch as T
from . import kv_layout as L

HEADS = 64
HEAD_DIM = 512
ROPE_DIM = 64
INDEX_HEADS = 64
INDEX_DIM = 128
HC_MULT = 4
HIDDEN = 4096
Q_LORA_RANK = 1024
SHARED_INTER = 2048
SWIGLU_LIMIT = 10.0
EPS = 1e-6
HC_EPS = 1e-6
SINKHORN_ITERS = 20
MAX_POS = 8192

BF16_ULP = 2.0 ** -7          # one bf16 unit in the last place, relative (worst case)
E4M3_ULP = 2.0 ** -3          # one e4m3 code, relative (worst case, normal range)
MAX_FRAC = 1e-3               # values allowed to differ at all (see the module docstring)

#: SGLang's function behind each check: name -> (module, attribute).
SGLANG_KERNELS = {
    "fused_q_norm_rope": ("sglang.kernels.ops.attention.dsv4.norm_rope", "fused_q_norm_rope"),
    "fused_rope_inplace": ("sglang.kernels.ops.attention.dsv4.norm_rope", "fused_rope_inplace"),
    "fused_k_norm_rope_flashmla": ("sglang.kernels.ops.attention.dsv4.norm_rope", "fused_k_norm_rope_flashmla"),
    "fused_store_cache": ("sglang.kernels.ops.attention.dsv4.attn", "fused_store_cache"),
    "fused_q_indexer_rope_hadamard_quant": ("sglang.kernels.ops.attention.dsv4.norm_rope",
                                            "fused_q_indexer_rope_hadamard_quant"),
    "hc_split_sinkhorn": ("sglang.kernels.ops.layernorm.mhc", "hc_split_sinkhorn"),
    "mhc_combine": ("sglang.kernels.ops.layernorm.mhc", "mhc_combine"),
    "fused_hc_head": ("sglang.kernels.ops.layernorm.mhc_head", "fused_hc_head"),
    "silu_and_mul_clamp": ("sglang.kernels.ops.activation.silu_and_mul_clamp", "silu_and_mul_clamp"),
    "init_compression_metadata": ("sglang.kernels.ops.attention.dsv4.metadata_kernel", "init_compression_metadata"),
}


def _require_cuda() -> torch.device:
    return require_cuda_sm80("the DeepSeek-V4 stand-in checks")


def sglang_kernel(name: str) -> Callable:
    """SGLang's function ``name`` (imported now), or :class:`CheckFailed` saying why not."""
    module, attr = SGLANG_KERNELS[name]
    try:
        return getattr(importlib.import_module(module), attr)
    except Exception as exc:  # no SGLang, or its module fails to import on this machine
        raise CheckFailed(f"cannot load SGLang's {module}.{attr}: {type(exc).__name__}: {exc}") from exc


def _start(name: str, kernel: Optional[Callable], seed: int) -> tuple[torch.device, Callable, torch.Generator]:
    """A check's device (:class:`CheckFailed` without CUDA sm_80+), its kernel (``kernel``, or SGLang's
    ``name``) and its generator on the device, seeded ``seed``."""
    device = _require_cuda()
    kernel = kernel or sglang_kernel(name)
    g = torch.Generator(device=device)
    g.manual_seed(seed)
    return device, kernel, g


def compare(case: str, got: torch.Tensor, want: torch.Tensor, rel: float, atol=0.0,
            max_frac: Optional[float] = MAX_FRAC) -> str:
    """Raise unless ``|got - want| <= rel * max(|got|, |want|) + atol`` everywhere and at most
    ``max_frac`` of the values differ (None: no such bound). ``want`` is the kernel's output."""
    require(tuple(got.shape) == tuple(want.shape),
            f"{case}: stand-in shape {tuple(got.shape)}, kernel shape {tuple(want.shape)}")
    g, w = got.double(), want.double()
    require(bool(torch.isfinite(w).all()), f"{case}: the kernel's output has non-finite values")
    require(bool(torch.isfinite(g).all()), f"{case}: the stand-in's output has non-finite values")
    n = g.numel()
    if n == 0:
        return f"{case}: empty"
    bound = rel * torch.maximum(g.abs(), w.abs()) + atol
    excess = (g - w).abs() - bound
    worst = int(excess.argmax())
    n_out = int((excess > 0).sum())
    require(n_out == 0, f"{case}: {n_out}/{n} values off by more than {rel:.1e} relative; worst at flat "
                        f"index {worst}: stand-in {float(g.flatten()[worst]):.6g}, kernel "
                        f"{float(w.flatten()[worst]):.6g}")
    n_diff = int((g != w).sum())
    if max_frac is not None:
        require(n_diff <= max_frac * n, f"{case}: {n_diff}/{n} values differ from the kernel's "
                                        f"(allowed {max_frac:.0e}): a different rounding point?")
    return f"{n_diff}/{n} differ"


def _freqs_cis(device) -> torch.Tensor:
    """A YaRN RoPE table like SGLang's ``precompute_freqs_cis`` (complex64 ``[MAX_POS, 32]``)."""
    from ..reference.ops import rope_frequencies

    f = rope_frequencies(ROPE_DIM, 10000.0, 4096, 16.0, 32.0, 1.0).double()
    ang = torch.outer(torch.arange(MAX_POS, dtype=torch.float64), f)
    return torch.polar(torch.ones_like(ang), ang).to(torch.complex64).to(device)


def _positions(tokens: int, g, device, dtype=torch.int64) -> torch.Tensor:
    return torch.randint(0, MAX_POS, (tokens,), generator=g, device=device, dtype=dtype)


# ------------------------------------------------------------------------------------------
# the checks


def check_q_norm_rope(tokens: int = 300, kernel=None, seed: int = 31) -> str:
    """Row 3: q RMSNorm + RoPE into bf16 and FP8 outputs, and the eps=None copy + RoPE."""
    device, kernel, g = _start("fused_q_norm_rope", kernel, seed)
    fc = _freqs_cis(device)
    pos = _positions(tokens, g, device)
    q = (torch.randn(tokens, HEADS, HEAD_DIM, generator=g, device=device) * 0.3).bfloat16()
    details = []
    for eps, dtype in ((EPS, torch.bfloat16), (None, torch.bfloat16), (EPS, torch.float8_e4m3fn)):
        out_k = torch.empty(q.shape, dtype=dtype, device=device)
        out_s = torch.empty(q.shape, dtype=dtype, device=device)
        kernel(q, out_k, eps, fc, pos)
        T.fused_q_norm_rope(q, out_s, eps, fc, pos)
        rel = E4M3_ULP if dtype == torch.float8_e4m3fn else BF16_ULP
        details.append(compare(f"q norm rope eps={eps} {dtype} T={tokens}", out_s.float(), out_k.float(), rel))
    return "; ".join(details)


def check_rope_inplace(tokens: int = 300, kernel=None, seed: int = 32) -> str:
    """Row 4: RoPE of the q view ``q[..., -64:]`` and a k tensor, forward and inverse."""
    device, kernel, g = _start("fused_rope_inplace", kernel, seed)
    fc = _freqs_cis(device)
    pos = _positions(tokens, g, device, torch.int32)
    q0 = (torch.randn(tokens, HEADS, HEAD_DIM, generator=g, device=device) * 2).bfloat16()
    k0 = torch.randn(tokens, 1, ROPE_DIM, generator=g, device=device).bfloat16()
    details = []
    for inverse in (False, True):
        qk, kk = q0.clone(), k0.clone()
        qs, ks = q0.clone(), k0.clone()
        kernel(qk[..., -ROPE_DIM:], kk, fc, pos, inverse=inverse)
        T.fused_rope_inplace(qs[..., -ROPE_DIM:], ks, fc, pos, inverse=inverse)
        details.append(compare(f"rope inverse={inverse} q T={tokens}", qs.float(), qk.float(), BF16_ULP))
        details.append(compare(f"rope inverse={inverse} k T={tokens}", ks.float(), kk.float(), BF16_ULP))
    return "; ".join(details)


def _written_mask(cache: torch.Tensor, slots: torch.Tensor, page_size: int) -> torch.Tensor:
    """Bytes of ``cache`` a V4 store of ``slots`` writes (576 data + 7 scale bytes each)."""
    mask = torch.zeros(cache.shape, dtype=torch.bool, device=cache.device)
    loc = slots.long()
    page, j = loc // page_size, loc % page_size
    cols = torch.arange(L.DATA_ROW_BYTES, device=cache.device)
    mask[page[:, None], (j * L.DATA_ROW_BYTES)[:, None] + cols] = True
    cols = torch.arange(L.NUM_SCALES, device=cache.device)
    mask[page[:, None], page_size * L.DATA_ROW_BYTES + (j * L.SCALE_ROW_BYTES)[:, None] + cols] = True
    return mask


def _compare_v4_caches(case: str, got: torch.Tensor, want: torch.Tensor, slots: torch.Tensor,
                       page_size: int, before: torch.Tensor) -> str:
    """Both caches started as ``before``: bytes outside the written rows must be unchanged and
    equal; the written rows must decode within one e4m3 code / bf16 ulp, few bytes differing."""
    written = _written_mask(want, slots, page_size)
    require(bool(torch.equal(want[~written], before[~written])),
            f"{case}: the kernel changed bytes outside the rows it was given (layout assumption wrong)")
    require(bool(torch.equal(got[~written], before[~written])),
            f"{case}: the stand-in changed bytes outside the rows it was given")
    rows_s = L.read_rows_reference(got, slots, page_size)
    rows_k = L.read_rows_reference(want, slots, page_size)
    nope = rows_k[:, : L.NOPE_DIM].abs().reshape(-1, L.NUM_SCALES, L.QUANT_GROUP)
    atol = torch.cat((nope.amax(-1, keepdim=True).expand_as(nope).reshape(-1, L.NOPE_DIM) * 2.0 ** -16,
                      torch.zeros_like(rows_k[:, L.NOPE_DIM:])), dim=1)
    rel = torch.cat((torch.full_like(rows_k[:, : L.NOPE_DIM], E4M3_ULP),
                     torch.full_like(rows_k[:, L.NOPE_DIM:], BF16_ULP)), dim=1)
    g, w = rows_s.double(), rows_k.double()
    excess = (g - w).abs() - (rel * torch.maximum(g.abs(), w.abs()) + atol)
    require(bool(torch.isfinite(w).all()) and bool(torch.isfinite(g).all()), f"{case}: non-finite values")
    n_out = int((excess > 0).sum())
    require(n_out == 0, f"{case}: {n_out}/{g.numel()} decoded values off by more than one code / ulp")
    n_diff = int((got[written] != want[written]).sum())
    n = int(written.sum())
    require(n_diff <= MAX_FRAC * n, f"{case}: {n_diff}/{n} written bytes differ from the kernel's "
                                    f"(allowed {MAX_FRAC:.0e}): a different rounding point?")
    return f"{n_diff}/{n} bytes differ"


def check_k_norm_rope_flashmla(tokens: int = 300, kernel=None, seed: int = 33) -> str:
    """Row 5: kv RMSNorm + RoPE + FP8 store into the 256-token-page SWA cache (V4 layout), kv a
    strided slice of ``qkv_a`` as the model passes it, some rows without a slot (-1)."""
    device, kernel, g = _start("fused_k_norm_rope_flashmla", kernel, seed)
    fc = _freqs_cis(device)
    pos = _positions(tokens, g, device)
    qkv = (torch.randn(tokens, Q_LORA_RANK + HEAD_DIM, generator=g, device=device) * 2).bfloat16()
    kv = qkv[:, Q_LORA_RANK:]
    w = (1 + 0.3 * torch.randn(HEAD_DIM, generator=g, device=device)).bfloat16()
    pages = tokens // L.SWA_PAGE_SIZE + 2
    slots = torch.randperm(pages * L.SWA_PAGE_SIZE, generator=g, device=device)[:tokens].to(torch.int32)
    slots[:: 7] = -1
    before = torch.randint(0, 256, (pages, L.page_bytes(L.SWA_PAGE_SIZE)), generator=g, device=device,
                           dtype=torch.uint8)
    cache_k, cache_s = before.clone(), before.clone()
    kernel(kv, w, EPS, fc, pos, slots, cache_k, L.SWA_PAGE_SIZE)
    T.fused_k_norm_rope_flashmla(kv, w, EPS, fc, pos, slots, cache_s, L.SWA_PAGE_SIZE)
    keep = slots >= 0
    return _compare_v4_caches(f"k norm rope store T={tokens}", cache_s, cache_k, slots[keep],
                              L.SWA_PAGE_SIZE, before)


def check_store_cache(tokens: int = 300, kernel=None, seed: int = 34) -> str:
    """fused_store_cache: the compressor's bf16 rows into the c4 (page 64) and c128 (page 2) V4
    caches, and 128-wide keys into the index-K cache (page 64, float32 scales)."""
    device, kernel, g = _start("fused_store_cache", kernel, seed)
    details = []
    for page_size in (L.C4_PAGE_SIZE, L.C128_PAGE_SIZE):
        rows = (torch.randn(tokens, HEAD_DIM, generator=g, device=device)
                * torch.rand(tokens, 1, generator=g, device=device) * 4).bfloat16()
        pages = tokens // page_size + 2
        slots = torch.randperm(pages * page_size, generator=g, device=device)[:tokens].to(torch.int32)
        before = torch.randint(0, 256, (pages, L.page_bytes(page_size)), generator=g, device=device,
                               dtype=torch.uint8)
        cache_k, cache_s = before.clone(), before.clone()
        kernel(rows, cache_k, slots, page_size=page_size, type="flashmla")
        T.fused_store_cache(rows, cache_s, slots, page_size=page_size, type="flashmla")
        details.append(_compare_v4_caches(f"store flashmla page {page_size} T={tokens}", cache_s, cache_k,
                                          slots, page_size, before))
    keys = (torch.randn(tokens, INDEX_DIM, generator=g, device=device) * 3).bfloat16()
    pages = tokens // L.INDEX_PAGE_SIZE + 2
    slots = torch.randperm(pages * L.INDEX_PAGE_SIZE, generator=g, device=device)[:tokens].to(torch.int32)
    pool_k = torch.zeros(pages, L.INDEX_PAGE_BYTES, dtype=torch.uint8, device=device)
    pool_s = pool_k.clone()
    kernel(keys, pool_k, slots, page_size=L.INDEX_PAGE_SIZE, type="indexer")
    T.fused_store_cache(keys, pool_s, slots, page_size=L.INDEX_PAGE_SIZE, type="indexer")
    ks, ss = L.read_index_keys_reference(pool_s)
    kk, sk = L.read_index_keys_reference(pool_k)
    # the float32 scale is one IEEE division in both: bit-equal; the keys within one e4m3 code
    details.append(compare(f"store indexer scales T={tokens}", ss, sk, 0.0, max_frac=0.0))
    details.append(compare(f"store indexer keys T={tokens}", ks, kk, E4M3_ULP))
    return "; ".join(details)


def check_q_indexer(tokens: int = 300, kernel=None, seed: int = 35) -> str:
    """Row 7: indexer q RoPE + Hadamard + FP8, the scale folded into the head weights."""
    device, kernel, g = _start("fused_q_indexer_rope_hadamard_quant", kernel, seed)
    fc = _freqs_cis(device)
    pos = _positions(tokens, g, device)
    q = (torch.randn(tokens, INDEX_HEADS, INDEX_DIM, generator=g, device=device)
         * torch.rand(tokens, INDEX_HEADS, 1, generator=g, device=device) * 4).bfloat16()
    wfull = torch.randn(tokens, INDEX_HEADS + 8, generator=g, device=device).bfloat16()
    weight = wfull[:, :INDEX_HEADS]
    ws = INDEX_HEADS ** -0.5 * INDEX_DIM ** -0.5
    qk, wk = kernel(q, weight, ws, fc, pos)
    qs, wsout = T.fused_q_indexer_rope_hadamard_quant(q, weight, ws, fc, pos)
    require(qs.dtype == qk.dtype and wsout.dtype == wk.dtype,
            f"indexer q: dtypes {qs.dtype}/{wsout.dtype} vs the kernel's {qk.dtype}/{wk.dtype}")
    return "; ".join((compare(f"indexer q fp8 T={tokens}", qs.float(), qk.float(), E4M3_ULP),
                      compare(f"indexer weights T={tokens}", wsout, wk, 1e-5, max_frac=None)))


def check_hc_split_sinkhorn(tokens: int = 300, kernel=None, seed: int = 36) -> str:
    """Row 8: the mHC Sinkhorn split of ``mixes [T, 1, 24]`` (20 iterations, eps 1e-6)."""
    device, kernel, g = _start("hc_split_sinkhorn", kernel, seed)
    mix_hc = (2 + HC_MULT) * HC_MULT
    mixes = torch.randn(tokens, 1, mix_hc, generator=g, device=device) * 2
    scale = torch.rand(3, generator=g, device=device) + 0.5
    base = torch.randn(mix_hc, generator=g, device=device)
    got = T.hc_split_sinkhorn(mixes, scale, base, HC_MULT, SINKHORN_ITERS, HC_EPS)
    want = kernel(mixes, scale, base, HC_MULT, SINKHORN_ITERS, HC_EPS)
    # float32 outputs; exp / sigmoid / division implementations differ by ulps, iterated 20 times
    return "; ".join(compare(f"sinkhorn {name} T={tokens}", a, b, 1e-5, atol=1e-7, max_frac=None)
                     for name, a, b in zip(("pre", "post", "comb"), got, want))


def check_mhc_combine(tokens: int = 300, kernel=None, seed: int = 37) -> str:
    """Row 9: ``y = sum_k pre_k x_k`` over the float32 ``x_flat [T, 4 * 4096]`` into bf16."""
    device, kernel, g = _start("mhc_combine", kernel, seed)
    x = torch.randn(tokens, HC_MULT * HIDDEN, generator=g, device=device)
    pre = torch.rand(tokens, 1, HC_MULT, generator=g, device=device).squeeze(1) + 1e-6
    return compare(f"mhc combine T={tokens}", T.mhc_combine(x, pre, HC_MULT, torch.bfloat16),
                   kernel(x, pre, HC_MULT, torch.bfloat16), BF16_ULP)


def check_hc_head(tokens: int = 300, kernel=None, seed: int = 38) -> str:
    """Row 10: ``hc_head`` of ``x [T, 4, 4096]`` bf16 (RMS-normed mixes, sigmoid gate, sum)."""
    device, kernel, g = _start("fused_hc_head", kernel, seed)
    x = (torch.randn(tokens, HC_MULT, HIDDEN, generator=g, device=device) * 2).bfloat16()
    fn = torch.randn(HC_MULT, HC_MULT * HIDDEN, generator=g, device=device) * 0.02
    scale = torch.rand(1, generator=g, device=device) + 0.5
    base = torch.randn(HC_MULT, generator=g, device=device) * 0.5
    return compare(f"hc head T={tokens}", T.fused_hc_head(x, fn, scale, base, EPS, HC_EPS),
                   kernel(x, fn, scale, base, norm_eps=EPS, hc_eps=HC_EPS), BF16_ULP)


def check_silu_and_mul_clamp(tokens: int = 300, kernel=None, seed: int = 39) -> str:
    """Row 11: the shared expert's clamped SwiGLU, ``[T, 2 x 2048]`` bf16, limit 10."""
    device, kernel, g = _start("silu_and_mul_clamp", kernel, seed)
    gu = (torch.randn(tokens, 2 * SHARED_INTER, generator=g, device=device) * 8).bfloat16()
    out_k = torch.empty(tokens, SHARED_INTER, dtype=torch.bfloat16, device=device)
    out_s = torch.empty_like(out_k)
    kernel(gu, out_k, SWIGLU_LIMIT)
    T.silu_and_mul_clamp(gu, out_s, SWIGLU_LIMIT)
    # the kernel's __expf and fast division are a few float32 ulps off: a few more bf16 flips
    return compare(f"silu_and_mul_clamp T={tokens}", out_s.float(), out_k.float(), BF16_ULP,
                   max_frac=3 * MAX_FRAC)


def check_compression_metadata(tokens: int = 300, kernel=None, seed: int = 40) -> str:
    """Row 1: c4 / c128 out_loc, positions, lengths and c128 page indices, exactly equal."""
    device, kernel, g = _start("init_compression_metadata", kernel, seed)
    max_pages, page_size = 40, L.SWA_PAGE_SIZE
    seq_lens = torch.randint(1, max_pages * page_size, (tokens,), generator=g, device=device, dtype=torch.int32)
    seq_lens[: min(tokens, 3)] = torch.tensor([128, 512, 3], device=device, dtype=torch.int32)[: min(tokens, 3)]
    positions = (seq_lens - 1).long()
    raw = torch.randint(0, 1 << 20, (max(tokens - 2, 1),), generator=g, device=device, dtype=torch.int64)
    page_table = torch.randint(0, 5000, (tokens, max_pages), generator=g, device=device, dtype=torch.int32)
    details = []
    for compute in (True, False):
        got = T.init_compression_metadata(seq_lens, positions, raw, page_table, page_size, compute)
        want = kernel(seq_lens, positions, raw, page_table, page_size, compute)
        require(len(got) == len(want) == 9, f"metadata: {len(got)} outputs, the kernel {len(want)}")
        for i, (a, b) in enumerate(zip(got, want)):
            if b is None or a is None:
                require(a is None and b is None, f"metadata output {i}: stand-in {type(a)}, kernel {type(b)}")
                continue
            require(a.dtype == b.dtype and a.shape == b.shape and bool(torch.equal(a, b)),
                    f"metadata (page indices {compute}) output {i}: differs from the kernel's "
                    f"({a.dtype} {tuple(a.shape)} vs {b.dtype} {tuple(b.shape)})")
        details.append(f"9 outputs equal (page indices {compute})")
    return "; ".join(details)


def gpu_checks() -> list[tuple[str, Callable[[], str]]]:
    checks: list[tuple[str, Callable[[], str]]] = []
    for tokens in (3, 700):
        kind = "decode" if tokens < 16 else "prefill"
        checks += [
            (f"dsv4 stand-in q norm rope ({kind}, {tokens} tokens)", lambda t=tokens: check_q_norm_rope(t)),
            (f"dsv4 stand-in rope inplace ({kind}, {tokens} tokens)", lambda t=tokens: check_rope_inplace(t)),
            (f"dsv4 stand-in k norm rope store ({kind}, {tokens} tokens)",
             lambda t=tokens: check_k_norm_rope_flashmla(t)),
            (f"dsv4 stand-in store cache ({kind}, {tokens} tokens)", lambda t=tokens: check_store_cache(t)),
            (f"dsv4 stand-in indexer q ({kind}, {tokens} tokens)", lambda t=tokens: check_q_indexer(t)),
            (f"dsv4 stand-in hc split sinkhorn ({kind}, {tokens} tokens)",
             lambda t=tokens: check_hc_split_sinkhorn(t)),
            (f"dsv4 stand-in mhc combine ({kind}, {tokens} tokens)", lambda t=tokens: check_mhc_combine(t)),
            (f"dsv4 stand-in hc head ({kind}, {tokens} tokens)", lambda t=tokens: check_hc_head(t)),
            (f"dsv4 stand-in silu_and_mul_clamp ({kind}, {tokens} tokens)",
             lambda t=tokens: check_silu_and_mul_clamp(t)),
            (f"dsv4 stand-in compression metadata ({kind}, {tokens} rows)",
             lambda t=tokens: check_compression_metadata(t)),
        ]
    return checks
