"""The host-side parts of the TileLang path, on the CPU: split-K merge, cache addressing, plans.

The kernels themselves only run on a GPU (tests/gpu); here the pieces around them are checked
against the torch reference with the exact rules the kernel uses (block b of 32 candidates goes
to split b % num_splits; a split reports its normalised output and log2-sum-exp).
"""

from __future__ import annotations

import secrets

import pytest
import torch

from sglang_ampere.kernels import kv_layout as L
from sglang_ampere.kernels import sparse_mla as S

M = pytest.importorskip("sglang_ampere.kernels.tilelang_mla")


def _seed():
    s = secrets.randbits(31)
    torch.manual_seed(s)
    return s


def _split_partials(q, kv, idx, lens, sm_scale, ns, bi=32):
    """What the decode kernel writes: per split, normalised O and log2-sum-exp (NEG if empty)."""
    T, H, D = q.shape
    po = torch.zeros(T, ns, H, D, dtype=torch.float64)
    pl = torch.full((T, ns, H), M._NEG, dtype=torch.float64)
    for t in range(T):
        n = min(int(lens[t]), idx.shape[1])
        for sp in range(ns):
            cols = [c for c in range(n) if (c // bi) % ns == sp and int(idx[t, c]) >= 0]
            if not cols:
                continue
            rows = kv[idx[t, cols].long()].double()
            s = (q[t].double() @ rows.T) * sm_scale * M.LOG2E          # log2 domain
            m = s.max(-1, keepdim=True).values
            p = torch.exp2(s - m)
            po[t, sp] = (p @ rows) / p.sum(-1, keepdim=True)
            pl[t, sp] = (m[:, 0] + torch.log2(p.sum(-1)))
    return po.float(), pl.float()


@pytest.mark.parametrize("ns", [2, 4, 16])
def test_split_merge_equals_one_softmax(ns):
    seed = _seed()
    T, H, D, N = 5, 8, 64, 400
    q, kv = torch.randn(T, H, D) * 2, torch.randn(N, D)
    idx = torch.randint(0, N, (T, 640), dtype=torch.int32)
    idx[torch.rand(T, 640) < 0.1] = -1
    lens = torch.tensor([640, 1, 33, 300, 0], dtype=torch.int32)
    idx[1, 0] = -1                                                     # token 1: nothing valid
    sink = torch.randn(H) * 3
    po, pl = _split_partials(q, kv, idx, lens, 0.1, ns)
    out, lse = M._combine(po, pl, sink)
    want = S.sparse_mla_torch(q, kv, idx, sink, 0.1, topk_length=lens)
    err = float((out - want).abs().max() / want.abs().max())
    assert err <= 1e-5, f"seed {seed}: {err}"
    assert torch.isinf(lse[1]).all() and torch.isinf(lse[4]).all() and torch.isfinite(lse[0]).all()
    assert out[1].abs().max() == 0 and out[4].abs().max() == 0


def test_merge_without_sink_and_all_empty():
    po = torch.zeros(2, 4, 3, 8)
    pl = torch.full((2, 4, 3), M._NEG)
    sink = torch.full((3,), M._NEG)                     # what the wrapper passes for "no sink"
    out, lse = M._combine(po, pl, sink)
    assert out.abs().max() == 0 and torch.isinf(lse).all()


def _kernel_decode(flat, slots, ps, st):
    """The kernel's byte addressing and integer decode, written out in torch."""
    slots = slots.long()
    base = (slots // ps) * st
    d = torch.arange(L.NOPE_DIM)
    b = flat[base[:, None] + (slots % ps)[:, None] * 576 + d].int()
    s = flat[base[:, None] + ps * 576 + (slots % ps)[:, None] * 8 + d // 64].int()
    e, m = (b >> 3) & 15, b & 7
    mag = torch.where(e > 0, (((e + 120) << 23) | (m << 20)).view(torch.float32), m.float() * 2.0 ** -9)
    scale = torch.where(s > 0, (s << 23).view(torch.float32), torch.full_like(mag, 2.0 ** -127))
    nope = torch.where((b & 128) > 0, -mag, mag) * scale
    r = torch.arange(L.ROPE_DIM)
    a = base[:, None] + (slots % ps)[:, None] * 576 + L.NOPE_DIM + 2 * r
    rope = ((flat[a].int() | (flat[a + 1].int() << 8)) << 16).view(torch.float32)
    return torch.cat([nope, rope], 1)


@pytest.mark.parametrize("ps", [L.SWA_PAGE_SIZE, L.C4_PAGE_SIZE, L.C128_PAGE_SIZE])
def test_flat_cache_addressing(ps):
    seed = _seed()
    pages = 5 if ps > 2 else 40
    buf = L.new_pool(pages, ps)
    n = pages * ps
    L.write_rows(buf, torch.arange(n), torch.randn(n, 512) * 3, ps)
    flat, ps2, st = M._flat_bytes(L.pool_view(buf, ps))
    assert (ps2, st) == (ps, L.page_bytes(ps))
    assert flat.is_contiguous() and flat.dtype == torch.uint8
    slots = torch.randint(0, n, (50,))
    got = _kernel_decode(flat, slots, ps, st)
    want = L.read_rows_reference(buf, slots, ps)
    assert torch.equal(got, want), f"seed {seed}"
    # the kernel's bounds rule: slot valid iff its page's rows+scales lie inside the flat bytes
    last_ok = (pages - 1) * st + ps * L.TOKEN_BYTES <= flat.numel()
    first_bad = pages * st + ps * L.TOKEN_BYTES <= flat.numel()
    assert last_ok and not first_bad


def test_split_choice_and_plans():
    assert M.choose_splits(1, 2, 82) == 16
    assert M.choose_splits(8, 2, 82) == 8
    assert M.choose_splits(200, 2, 82) == 1
    assert M.plan_for(86).shared_bytes() <= 99 * 1024 and M.plan_for(80) == M.plan_for(86)
    assert M.plan_for(89) == M.PLANS[86]
    with pytest.raises(ValueError, match="sm_80..sm_89"):
        M.plan_for(90)


def test_cpu_tensors_get_a_clear_error():
    q = torch.randn(2, 64, 512)
    with pytest.raises(RuntimeError, match="SGLANG_AMPERE_PREFILL_BACKEND"):
        S.sparse_mla_tilelang(q, torch.randn(10, 512), torch.zeros(2, 4, dtype=torch.int32), None, 0.1)


@pytest.mark.slow
def test_runtime_jit_path_builds_without_a_gpu():
    """What serving calls (tilelang.compile with the tvm_ffi backend), not just lower + nvcc."""
    import shutil

    if shutil.which("nvcc") is None:
        pytest.skip("nvcc is not installed")
    spec = M.KernelSpec(paged=True, num_splits=4, plan=M.plan_for(86), page2=(64, L.page_bytes(64)))
    kernel = M.compiled(spec, 86)
    src = kernel.get_kernel_source()
    assert "mma_sync<tl::DataType::kBFloat16" in src
    assert "fp8" not in src.lower() and "e4m3" not in src.lower()          # FP8 decoded with integer ops only
    assert "149760" in src and "37440" in src                               # both page strides baked in


def test_launch_builders_work_on_any_device(gen):
    """The argument builders the CUDA wrappers and the CPU tile tests share: kernel order, page
    geometry from the pool views, the split choice, and refusal without a way to choose splits."""
    from sglang_ampere.kernels import selfchecks as G

    kw = G.paged_case(3, 1024, 4, int(torch.randint(0, 2**31, (1,), generator=gen)), torch.device("cpu"))
    plan = M.PLANS[86]
    la = M.paged_launch(kw["q"], kw["k_cache"], kw["indices"], kw["topk_length"], kw["attn_sink"], G.SCALE,
                        kw["extra_k_cache"], kw["extra_indices_in_kvcache"], kw["extra_topk_length"],
                        plan=plan, num_splits=2)
    assert la.spec.page1 == (L.SWA_PAGE_SIZE, L.page_bytes(L.SWA_PAGE_SIZE))
    assert la.spec.page2 == (L.C4_PAGE_SIZE, L.page_bytes(L.C4_PAGE_SIZE)) and la.spec.num_splits == 2
    assert la.tokens == 3 and len(la.args) == 8 and la.args[-1].dtype == torch.float32
    assert [a.dtype for a in la.args[:4]] == [torch.bfloat16, torch.uint8, torch.int32, torch.int32]
    assert M.paged_launch(kw["q"], kw["k_cache"], kw["indices"], kw["topk_length"], None, G.SCALE,
                          plan=plan, sms=82).spec.num_splits == M.choose_splits(3, 2, 82)
    with pytest.raises(ValueError, match="num_splits or the device's SM count"):
        M.dense_launch(torch.randn(2, 64, 512), torch.randn(9, 512), torch.zeros(2, 4, dtype=torch.int32),
                       None, 0.1, plan=plan)
