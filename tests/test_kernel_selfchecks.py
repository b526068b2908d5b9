"""The GPU self-check harness, exercised on the CPU with the torch path standing in for TileLang.

Proves the checks build valid backend-shaped inputs, pass for a correct implementation and
fail for a wrong one, so a GPU run that passes means something.
"""

from __future__ import annotations

import pytest
import torch

from sglang_ampere.checking import CheckFailed
from sglang_ampere.kernels import selfchecks as G
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


# C4 indexer checks: the torch path stands in for the TileLang kernel

def _indexer_as(monkeypatch, fn):
    from sglang_ampere.kernels import tilelang_indexer as TI

    monkeypatch.setattr(TI, "paged_mqa_logits_tilelang", fn)


def test_indexer_checks_cover_the_real_shapes():
    names = [n for n, _ in G.gpu_checks()]
    assert any("indexer decode" in n and "128k" in n for n in names)
    assert any("indexer decode" in n and "4k" in n for n in names)
    assert any("indexer prefill (4096 rows" in n and "64k" in n for n in names)


def test_indexer_check_passes_for_a_correct_kernel(on_cpu, monkeypatch):
    from sglang_ampere.kernels import indexer as I

    _indexer_as(monkeypatch, lambda *a: I.paged_mqa_logits_torch(*a))
    assert "max rel err" in G.check_indexer(3, 4096)
    assert "max rel err" in G.check_indexer(64, 2048, decode=False)
    assert "max rel err" in G.check_indexer(2, 1024, width_pad=50)


def test_indexer_check_fails_for_wrong_kernels(on_cpu, monkeypatch):
    from sglang_ampere.kernels import indexer as I

    def first_rows_pages(q, kv, w, lens, table, md, width, clean=False):
        return I.paged_mqa_logits_torch(q, kv, w, lens, table[:1].expand_as(table).contiguous(), md, width)
    _indexer_as(monkeypatch, first_rows_pages)
    with pytest.raises(CheckFailed, match="rel err"):
        G.check_indexer(3, 4096)

    def unweighted_heads(q, kv, w, lens, table, md, width, clean=False):
        return I.paged_mqa_logits_torch(q, kv, w.mean(1, keepdim=True).expand_as(w), lens, table, md, width)
    _indexer_as(monkeypatch, unweighted_heads)
    with pytest.raises(CheckFailed, match="rel err"):
        G.check_indexer(32, 2048, decode=False)

    def garbage_past_length(q, kv, w, lens, table, md, width, clean=False):
        out = I.paged_mqa_logits_torch(q, kv, w, lens, table, md, width)
        past = torch.arange(width)[None, :] >= lens[:, None].long()
        return out.masked_fill(past, 1e-6)
    _indexer_as(monkeypatch, garbage_past_length)
    with pytest.raises(CheckFailed, match="past the rows' lengths"):
        G.check_indexer(3, 4096)

    def drops_last_partial_page(q, kv, w, lens, table, md, width, clean=False):
        return I.paged_mqa_logits_torch(q, kv, w, (lens // 64) * 64, table, md, width)
    _indexer_as(monkeypatch, drops_last_partial_page)
    with pytest.raises(CheckFailed, match="rel err"):
        G.check_indexer(64, 2048, decode=False)
