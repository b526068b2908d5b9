"""The GPU self-check harness, exercised on the CPU with the torch path standing in for TileLang.

Proves the checks build valid backend-shaped inputs, pass for a correct implementation and
fail for a wrong one, so a GPU run that passes means something.
"""

from __future__ import annotations

import pytest
import torch

from sglang_ampere.checking import CheckFailed
from sglang_ampere.kernels import gpu_checks as G
from sglang_ampere.kernels import sparse_mla as S


@pytest.fixture
def on_cpu(monkeypatch):
    monkeypatch.setattr(G, "_require_cuda", lambda: torch.device("cpu"))


def _bf16_paged(**kw):
    out, lse = S.sparse_mla_paged_torch(**kw)
    return out.to(torch.bfloat16), lse


def test_checks_list_covers_the_real_shapes():
    names = [n for n, _ in G.gpu_checks()]
    assert any("dense decode" in n for n in names) and any("dense prefill" in n for n in names)
    assert any("paged decode c4" in n and "64k" in n for n in names)
    assert any("paged decode c128" in n and "4k" in n for n in names)
    assert any("paged prefill" in n for n in names)


def test_without_cuda_the_checks_say_why():
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(CheckFailed, match="no CUDA device"):
        G.gpu_checks()[0][1]()


def test_paged_check_passes_for_a_correct_kernel(on_cpu, monkeypatch):
    monkeypatch.setattr(S, "sparse_mla_paged_tilelang", _bf16_paged)
    assert "max rel err" in G.check_paged(3, 4096, 4)
    assert "max rel err" in G.check_paged(2, 4096, 128)
    assert "max rel err" in G.check_paged(16, 1024, 4, decode=False)


def test_paged_check_fails_for_a_wrong_kernel(on_cpu, monkeypatch):
    def no_sink(**kw):
        return _bf16_paged(**{**kw, "attn_sink": None})
    monkeypatch.setattr(S, "sparse_mla_paged_tilelang", no_sink)
    with pytest.raises(CheckFailed, match="rel err"):
        G.check_paged(3, 4096, 4)

    def ignores_extra(**kw):
        return _bf16_paged(**{**kw, "extra_k_cache": None})
    monkeypatch.setattr(S, "sparse_mla_paged_tilelang", ignores_extra)
    with pytest.raises(CheckFailed):
        G.check_paged(3, 4096, 128)


def test_dense_check_passes_and_fails(on_cpu, monkeypatch):
    monkeypatch.setattr(S, "sparse_mla_tilelang", lambda q, kv, idx, sink, sc, topk_length=None:
                        S.sparse_mla_torch(q, kv, idx, sink, sc, topk_length).to(torch.bfloat16))
    assert "max rel err" in G.check_dense(2, 4096)
    monkeypatch.setattr(S, "sparse_mla_tilelang", lambda q, kv, idx, sink, sc, topk_length=None:
                        S.sparse_mla_torch(q, kv, idx, sink, sc, None))       # ignores the lengths
    with pytest.raises(CheckFailed, match="rel err"):
        G.check_dense(2, 4096)
