"""The torch sparse-MLA fallback (dense form) against float64 math.

Every test draws a fresh seed and reports it on failure, so reruns explore new inputs.
"""

from __future__ import annotations

import secrets

import pytest
import torch

from sglang_ampere.kernels import sparse_mla as S


def _seed() -> int:
    s = secrets.randbits(31)
    torch.manual_seed(s)
    return s


def reference_f64(q, kv, indices, sink, sm_scale, topk_length=None):
    """Straight per-token float64 evaluation of the module docstring's formula."""
    q, kv = q.double(), kv.double()
    T, H, D = q.shape
    out = torch.zeros(T, H, kv.shape[1], dtype=torch.float64)
    for t in range(T):
        row = indices[t].long()
        cols = torch.arange(row.numel())
        ok = (row >= 0) & (row < kv.shape[0])
        if topk_length is not None:
            ok &= cols < int(topk_length[t])
        sel = row[ok]
        if sel.numel() == 0:
            continue
        s = (q[t] @ kv[sel].T) * sm_scale                      # [H, k]
        m = s.max(-1).values
        if sink is not None:
            m = torch.maximum(m, sink.double())
        p = torch.exp(s - m[:, None])
        den = p.sum(-1)
        if sink is not None:
            den = den + torch.exp(sink.double() - m)
        out[t] = (p @ kv[sel]) / den[:, None]
    return out


def _rel(a, b):
    return float((a.double() - b).abs().max() / b.abs().max().clamp(min=1e-300))


def _inputs(T, H, D, N, K, dtype, scale=1.0):
    q = (torch.randn(T, H, D) * scale).to(dtype)
    kv = torch.randn(N, D).to(dtype)
    idx = torch.randint(0, N, (T, K), dtype=torch.int32)
    pad = torch.rand(T, K) < 0.25                               # padding slots anywhere
    idx[pad] = -1
    idx[:, 0] = torch.randint(0, N, (T,), dtype=torch.int32)    # at least one valid slot
    if K > 3:
        idx[:, 2] = idx[:, 1].clamp(min=0)                      # duplicate indices
    sink = torch.randn(H) * 2
    return q, kv, idx, sink


@pytest.mark.parametrize("T,H,D,N,K", [(1, 64, 512, 300, 640), (7, 5, 72, 33, 13), (3, 16, 512, 1000, 129)])
def test_fp32_matches_float64(T, H, D, N, K):
    seed = _seed()
    q, kv, idx, sink = _inputs(T, H, D, N, K, torch.float32, scale=3.0)
    out = S.sparse_mla_torch(q, kv, idx, sink, D ** -0.5)
    ref = reference_f64(q, kv, idx, sink, D ** -0.5)
    assert out.dtype == torch.float32 and out.shape == (T, H, D)
    assert _rel(out, ref) <= 1e-5, f"seed {seed}: rel err {_rel(out, ref)}"


def test_bf16_matches_float64():
    seed = _seed()
    q, kv, idx, sink = _inputs(9, 64, 512, 500, 200, torch.bfloat16, scale=2.0)
    out = S.sparse_mla_torch(q, kv, idx, sink, 512 ** -0.5)
    ref = reference_f64(q, kv, idx, sink, 512 ** -0.5)
    assert out.dtype == torch.bfloat16
    assert _rel(out, ref) <= 1e-2, f"seed {seed}: rel err {_rel(out, ref)}"


@pytest.mark.parametrize("sink_value", [-1e4, -60.0, 60.0, 300.0])
def test_extreme_sinks(sink_value):
    seed = _seed()
    q, kv, idx, sink = _inputs(4, 6, 40, 50, 17, torch.float32, scale=4.0)
    sink = sink + sink_value
    sink[0] = 0.5                                                # one ordinary head
    out = S.sparse_mla_torch(q, kv, idx, sink, 40 ** -0.5)
    ref = reference_f64(q, kv, idx, sink, 40 ** -0.5)
    assert torch.isfinite(out).all(), f"seed {seed}"
    # per head: a huge sink scales a head's output down by e^-big, so compare head by head
    for h in range(6):
        if ref[:, h].abs().max() > 1e-30:
            assert _rel(out[:, h], ref[:, h]) <= 1e-5, f"seed {seed} head {h}: {_rel(out[:, h], ref[:, h])}"
        else:   # below float32's range: the fp32 result must have underflowed towards 0
            assert out[:, h].abs().max() <= 1e-30, f"seed {seed} head {h}"
    if sink_value < 0:
        assert _rel(out, ref) <= 1e-5, f"seed {seed}"


def test_empty_rows_are_zero_and_lengths_apply():
    seed = _seed()
    q, kv, idx, sink = _inputs(6, 4, 64, 40, 24, torch.float32)
    idx[1] = -1
    lens = torch.randint(1, 25, (6,), dtype=torch.int32)
    lens[3] = 0
    out = S.sparse_mla_torch(q, kv, idx, sink, 0.125, topk_length=lens)
    ref = reference_f64(q, kv, idx, sink, 0.125, topk_length=lens)
    assert out[1].abs().max() == 0 and out[3].abs().max() == 0
    assert out[0].abs().max() > 0
    assert _rel(out, ref) <= 1e-5, f"seed {seed}"


def test_out_of_range_index_is_ignored_and_flashmla_shapes_accepted():
    seed = _seed()
    q, kv, idx, sink = _inputs(3, 4, 64, 40, 8, torch.float32)
    idx2 = idx.clone()
    idx2[:, -1] = 40                                             # >= N: invalid, like FlashMLA
    idx[:, -1] = -1
    a = S.sparse_mla_torch(q, kv.unsqueeze(1), idx2.unsqueeze(1), sink, 0.1)
    b = S.sparse_mla_torch(q, kv, idx, sink, 0.1)
    assert torch.equal(a, b), f"seed {seed}"


def test_chunking_does_not_change_the_result():
    seed = _seed()
    q, kv, idx, sink = _inputs(11, 8, 96, 300, 333, torch.float32)
    whole = S.sparse_mla_torch(q, kv, idx, sink, 0.1, budget_mb=1024)
    tiny = S.sparse_mla_torch(q, kv, idx, sink, 0.1, budget_mb=0.002)   # ~2 KB chunks
    assert S.plan_chunks(11, 8, 96, 333, int(0.002 * 2**20)).cands < 333
    assert _rel(tiny, reference_f64(q, kv, idx, sink, 0.1)) <= 1e-5, f"seed {seed}"
    assert _rel(whole, reference_f64(q, kv, idx, sink, 0.1)) <= 1e-5, f"seed {seed}"


@pytest.mark.parametrize("T,K", [(1, 1_048_576 // 128 + 128), (16384, 640), (8, 640)])
def test_plan_respects_budget(T, K):
    budget = 256 * 2**20
    plan = S.plan_chunks(T, 64, 512, K, budget, row_bytes=512 * 4 * 3 + 584)
    assert plan.largest_bytes <= budget
    assert plan.tokens >= 1 and plan.cands >= 1


def test_budget_env_var(monkeypatch):
    monkeypatch.setenv("SGLANG_AMPERE_TORCH_MLA_BUDGET_MB", "lots")
    q, kv, idx, sink = _inputs(2, 2, 16, 8, 4, torch.float32)
    with pytest.raises(ValueError, match="SGLANG_AMPERE_TORCH_MLA_BUDGET_MB"):
        S.sparse_mla_torch(q, kv, idx, sink, 0.25)
    monkeypatch.setenv("SGLANG_AMPERE_TORCH_MLA_BUDGET_MB", "0.001")
    out = S.sparse_mla_torch(q, kv, idx, sink, 0.25)
    assert _rel(out, reference_f64(q, kv, idx, sink, 0.25)) <= 1e-5


def test_bad_shapes_explain_themselves():
    with pytest.raises(ValueError, match="expected q"):
        S.sparse_mla_torch(torch.randn(2, 4, 8), torch.randn(5, 16), torch.zeros(2, 3, dtype=torch.int32), None, 1.0)
