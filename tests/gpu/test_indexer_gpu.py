"""The TileLang C4-indexer kernel on a real GPU (skipped without CUDA sm_80+): CUDA-graph
capture and replay with new lengths and pages, every output column written (no reliance on a
zeroed result), and the pre-capture build. The kernel-vs-torch checks on real shapes are in
``gpu_checks.indexer_checks()`` (run by tests/gpu/test_sparse_mla_gpu.py and ``selftest``)."""

from __future__ import annotations

import pytest
import torch
from helpers.gpu import GPU_MARKS

from sglang_ampere.kernels import indexer as I
from sglang_ampere.kernels import selfchecks as G
from sglang_ampere.kernels import tilelang_indexer as TI

pytestmark = GPU_MARKS


@pytest.fixture(scope="module", autouse=True)
def _tilelang():
    pytest.importorskip("tilelang")


def _close(got, want):
    err = G.worst_slice_max_rel(got, want, dim=0)
    assert err <= G.INDEXER_TOL, err


def test_precompile_builds_every_serving_kernel():
    assert TI.precompile(log=print) == len(TI.SPLITS)


def test_cuda_graph_capture_and_replay_with_new_lengths_and_pages():
    dev = torch.device("cuda")
    q, pool, w, lens, table, md, width, clean = G.indexer_case(16, 16384, 5, dev)
    static = [t.clone() for t in (q, w, lens, table)]
    TI.paged_mqa_logits_tilelang(static[0], pool, static[1], static[2], static[3], md, width)   # compile + warm
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = TI.paged_mqa_logits_tilelang(static[0], pool, static[1], static[2], static[3], md, width)
    for seed in (6, 7):
        q2, _, w2, lens2, table2, *_ = G.indexer_case(16, 16384, seed, dev)
        for dst, src in zip(static, (q2, w2, lens2, table2)):
            dst.copy_(src)
        graph.replay()
        want = I.paged_mqa_logits_torch(static[0], pool, static[1], static[2], static[3], md, width)
        _close(out, want)


def test_every_column_is_written():
    dev = torch.device("cuda")
    args = G.indexer_case(256, 8192, 8, dev, decode=False, width_pad=77)
    junk = torch.full((256, args[6] + 1024), float("nan"), device=dev)
    del junk                                             # the caching allocator hands this block back
    got = TI.paged_mqa_logits_tilelang(*args)
    assert bool(torch.isfinite(got).all())
    _close(got, I.paged_mqa_logits_torch(*args))
