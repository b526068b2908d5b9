"""patches/dsv4_indexer.py: SGLang's torch indexer logits rerouted below sm_90."""

from __future__ import annotations

import pytest
import torch
from helpers import decision_fixture, run_with_sglang

from sglang_ampere import envvars
from sglang_ampere.kernels import indexer as I
from sglang_ampere.kernels import kv_layout as L
from sglang_ampere.patches import PATCH_MODULES
from sglang_ampere.patches import dsv4_indexer as X

ampere = decision_fixture(X, True)
hopper = decision_fixture(X, False)


def _exact_case(gen, rows=5, pages=4):
    """Keys in {0, 1}, queries in {-1, 0, 1}, weights in eighths: every q.k is a small integer,
    exact in bf16, so SGLang's bf16 bmm and our float32 one give the same bits."""
    pool = L.index_pool(pages)
    flat = pool.view(pages, L.INDEX_PAGE_BYTES)
    n = pages * L.INDEX_PAGE_SIZE
    keys = (torch.rand(n, L.INDEX_DIM, generator=gen) < 0.3).float()
    flat[:, : L.INDEX_SCALE_OFFSET] = keys.to(torch.float8_e4m3fn).view(torch.uint8).reshape(pages, -1)
    scales = torch.rand(n, generator=gen) + 0.5
    flat[:, L.INDEX_SCALE_OFFSET:] = scales.view(torch.uint8).reshape(pages, -1)
    q = torch.randint(-1, 2, (rows, 1, 64, L.INDEX_DIM), generator=gen).float().to(torch.float8_e4m3fn)
    w = torch.randint(1, 16, (rows, 64), generator=gen).float() / 8
    seq = torch.randint(1, n + 1, (rows,), generator=gen).int()
    table = torch.stack([torch.randperm(pages, generator=gen) for _ in range(rows)]).int()
    return q, pool, w, seq, table


def test_registered_and_documented():
    assert "sglang_ampere.patches.dsv4_indexer" in PATCH_MODULES
    for word in ("Target:", "Hook:", "Why:", "SGLang:", "0.5.23", "AROUND"):
        assert word in X.__doc__
    targets = {h.target for h in X.hooks()}
    assert targets == {f"{X.IDX}.fp8_paged_mqa_logits_torch", f"{X.BE}.DeepseekV4AttnBackend.__init__"}
    assert all(h.hook_type == "AROUND" and h.why for h in X.hooks())


@pytest.mark.parametrize("name", ["torch", "tilelang"])
def test_routes_to_the_chosen_backend_on_ampere(ampere, monkeypatch, name):
    monkeypatch.setenv("SGLANG_AMPERE_INDEXER_BACKEND", name)
    calls = []
    monkeypatch.setitem(I.IMPLEMENTATIONS, name, lambda *a, **k: calls.append((name, a, k)) or "logits")
    out = X.paged_mqa_logits_hook(lambda *a, **k: pytest.fail("SGLang's function must not run"), 1, 2, clean=False)
    assert out == "logits" and calls == [(name, (1, 2), {"clean": False})]


def test_bad_backend_is_refused_with_the_choices(ampere, monkeypatch):
    monkeypatch.setenv("SGLANG_AMPERE_INDEXER_BACKEND", "deepgemm")
    with pytest.raises(ValueError, match="torch, tilelang"):
        X.paged_mqa_logits_hook(lambda *a: None)


def test_hopper_keeps_sglang_function(hopper):
    assert X.paged_mqa_logits_hook(lambda *a, **k: ("orig", a, k), 1, x=2) == ("orig", (1,), {"x": 2})
    built = []
    X.backend_init_hook(lambda self: built.append("init"), object())
    assert built == ["init"]


def test_torch_route_gives_sglang_result_and_the_same_top_k(ampere, monkeypatch, gen):
    """What the top-k stage receives: same shape, dtype, layout and (on exact inputs) bits."""
    sg = pytest.importorskip("sglang.srt.layers.attention.dsv4.indexer")
    monkeypatch.setenv("SGLANG_AMPERE_INDEXER_BACKEND", "torch")
    q, pool, w, seq, table = _exact_case(gen)
    args = (q, pool, w, seq, table, None, 320, False)
    ours = X.paged_mqa_logits_hook(sg.fp8_paged_mqa_logits_torch, *args)
    theirs = sg.fp8_paged_mqa_logits_torch(*args)
    assert (ours.shape, ours.dtype, ours.stride()) == (theirs.shape, theirs.dtype, theirs.stride())
    assert torch.equal(ours, theirs) and ours.abs().max() > 0
    picked = []
    for logits in (ours, theirs):
        out = torch.full((q.shape[0], 64), -7, dtype=torch.int32)      # top-64 of <= 256 entries
        raw = torch.full_like(out, -7)
        sg.topk_transform_pytorch_vectorized(logits, seq, table, out, L.INDEX_PAGE_SIZE, raw)
        picked.append((out, raw))
    assert torch.equal(picked[0][0], picked[1][0]) and torch.equal(picked[0][1], picked[1][1])


def test_init_hook_checks_the_branch_and_builds_kernels(ampere, monkeypatch):
    pytest.importorskip("sglang")
    monkeypatch.setenv("SGLANG_FP8_PAGED_MQA_LOGITS_TORCH", "1")
    monkeypatch.setenv("SGLANG_OPT_USE_TILELANG_INDEXER", "0")
    built = []
    monkeypatch.setattr(X, "precompile_tilelang", lambda: built.append(1))
    monkeypatch.setenv("SGLANG_AMPERE_INDEXER_BACKEND", "tilelang")
    X.backend_init_hook(lambda self, *a: None, object(), "runner")
    assert built == [1]
    monkeypatch.setenv("SGLANG_AMPERE_INDEXER_BACKEND", "torch")
    X.backend_init_hook(lambda self, *a: None, object(), "runner")
    assert built == [1]                                  # torch: nothing to build
    monkeypatch.setenv("SGLANG_FP8_PAGED_MQA_LOGITS_TORCH", "0")
    with pytest.raises(RuntimeError, match="SGLANG_FP8_PAGED_MQA_LOGITS_TORCH=1"):
        X.backend_init_hook(lambda self, *a: None, object())
    monkeypatch.setenv("SGLANG_FP8_PAGED_MQA_LOGITS_TORCH", "1")
    monkeypatch.setenv("SGLANG_OPT_USE_TILELANG_INDEXER", "1")
    with pytest.raises(RuntimeError, match="SGLANG_OPT_USE_TILELANG_INDEXER"):
        X.backend_init_hook(lambda self, *a: None, object())


_SUBPROCESS = r"""
import json, torch
from sglang.srt.plugins.hook_registry import HookRegistry, HookType
from sglang_ampere.patches import dsv4_indexer as X
from sglang_ampere.kernels import indexer as I, kv_layout as L
for h in X.hooks():
    HookRegistry.register(h.target, h.fn, getattr(HookType, h.hook_type))
HookRegistry.apply_hooks()
import sglang.srt.layers.attention.dsv4.indexer as IDX
g = torch.Generator().manual_seed(7)
pool = L.index_pool(3)
L.write_index_keys(pool, torch.arange(192), torch.randn(192, 128, generator=g))
args = (torch.randn(2, 1, 64, 128, generator=g).to(torch.float8_e4m3fn), pool, torch.rand(2, 64, generator=g),
        torch.tensor([150, 9], dtype=torch.int32), torch.tensor([[2, 0, 1], [1, -1, -1]], dtype=torch.int32),
        None, 192, False)
res = {}
X.needs_ampere_path = lambda: False
res["hopper_bf16_rounded"] = not torch.equal(IDX.fp8_paged_mqa_logits_torch(*args), I.paged_mqa_logits_torch(*args))
X.needs_ampere_path = lambda: True
res["ampere_ours"] = torch.equal(IDX.fp8_paged_mqa_logits_torch(*args), I.paged_mqa_logits_torch(*args))
print("RESULT" + json.dumps(res))
"""


@pytest.mark.slow
def test_hook_applies_to_sglang_0_5_23():
    """Through SGLang's own HookRegistry, the module global forward_c4_indexer looks up changes."""
    res = run_with_sglang(_SUBPROCESS, {envvars.INDEXER_BACKEND: "torch"})
    assert res == {"hopper_bf16_rounded": True, "ampere_ours": True}
