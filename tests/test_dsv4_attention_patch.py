"""patches/dsv4_attention.py: the routing of the DeepSeek-V4 backend's FlashMLA calls on sm < 90."""

from __future__ import annotations

import secrets
import types

import pytest
import torch
from helpers import decision_fixture, run_with_sglang

from sglang_ampere import envvars
from sglang_ampere.kernels import kv_layout as L
from sglang_ampere.kernels import sparse_mla as S
from sglang_ampere.patches import PATCH_MODULES
from sglang_ampere.patches import dsv4_attention as D

ampere = decision_fixture(D, True)
hopper = decision_fixture(D, False)


def _paged_kwargs(T=3, H=4):
    torch.manual_seed(secrets.randbits(31))
    buf = L.new_pool(2, 256)
    L.write_rows(buf, torch.arange(300), torch.randn(300, 512), 256)
    idx = torch.randint(0, 300, (T, 1, 128), dtype=torch.int32)
    return dict(q=torch.randn(T, 1, H, 512).to(torch.bfloat16), k_cache=L.pool_view(buf, 256), block_table=None,
                cache_seqlens=None, head_dim_v=512, tile_scheduler_metadata=None, softmax_scale=512 ** -0.5,
                is_fp8_kvcache=True, indices=idx, topk_length=torch.full((T,), 100, dtype=torch.int32),
                attn_sink=torch.randn(H), extra_k_cache=None, extra_indices_in_kvcache=None,
                extra_topk_length=None, use_legacy=True)


def test_registered_and_documented():
    assert "sglang_ampere.patches.dsv4_attention" in PATCH_MODULES
    doc = D.__doc__
    for word in ("Target:", "Hook:", "Why:", "SGLang:", "0.5.23", "AROUND"):
        assert word in doc
    hooks = D.hooks()
    assert {h.hook_type for h in hooks} == {"AROUND"}
    assert {h.target.rsplit(".", 1)[-1] for h in hooks} == {
        "_create_flashmla_metadata", "__init__", "_use_sparse_prefill", "forward"}
    assert all(h.target.startswith(D.BE + ".") and h.why for h in hooks)


@pytest.mark.parametrize("prefill,decode", [("torch", "tilelang"), ("tilelang", "torch"), ("torch", "torch")])
def test_each_phase_uses_its_setting(monkeypatch, prefill, decode):
    monkeypatch.setenv("SGLANG_AMPERE_PREFILL_BACKEND", prefill)
    monkeypatch.setenv("SGLANG_AMPERE_DECODE_BACKEND", decode)
    calls = []
    monkeypatch.setattr(D, "paged_impl", lambda name: (lambda **kw: calls.append(name) or ("out", "lse")))
    backends = D.chosen_backends()
    assert D.route_paged_call(backends, "prefill", q=1) == ("out", "lse")
    D.route_paged_call(backends, "decode", q=1)
    D.route_paged_call(backends, None, q=1)          # unknown phase: the decode choice
    assert calls == [prefill, decode, decode]


def test_bad_setting_is_refused_with_the_choices(monkeypatch):
    monkeypatch.setenv("SGLANG_AMPERE_DECODE_BACKEND", "flashmla")
    with pytest.raises(ValueError, match="torch, tilelang"):
        D.chosen_backends()


def test_torch_route_computes_the_paged_result(monkeypatch):
    monkeypatch.setenv("SGLANG_AMPERE_PREFILL_BACKEND", "torch")
    kw = _paged_kwargs()
    out, lse = D.route_paged_call(D.chosen_backends(), "prefill", **kw)
    want, want_lse = S.sparse_mla_paged_torch(**kw)
    assert torch.equal(out, want) and torch.equal(lse, want_lse) and out.abs().max() > 0


def test_tilelang_route_reaches_the_tilelang_path(monkeypatch):
    monkeypatch.setenv("SGLANG_AMPERE_DECODE_BACKEND", "tilelang")
    kw = _paged_kwargs()
    if torch.cuda.is_available():
        pytest.skip("on a GPU the TileLang route runs for real (tests/gpu)")
    with pytest.raises(RuntimeError, match="TileLang sparse-MLA kernels run on CUDA only"):
        D.route_paged_call(D.chosen_backends(), "decode", **kw)


class _FakeBackend:
    """Stands in for DeepseekV4AttnBackend: its __init__ binds a FlashMLA partial like 0.5.23's."""

    def __init__(self, *args, **kwargs):
        self._flash_mla_with_kvcache = lambda **kw: pytest.fail("FlashMLA must not be called on sm_86")
        self.init_args = (args, kwargs)

    def forward(self, q, k, v, layer, forward_batch, *args, **kwargs):
        return self._flash_mla_with_kvcache(**q)

    def _use_sparse_prefill(self, forward_batch, *, num_qo_tokens):
        return True


def _mode(name):
    from sglang.srt.model_executor.forward_batch_info import ForwardMode

    return types.SimpleNamespace(forward_mode=getattr(ForwardMode, name))


def test_hooks_route_backend_calls_on_ampere(ampere, monkeypatch):
    pytest.importorskip("sglang")
    monkeypatch.setenv("SGLANG_AMPERE_PREFILL_BACKEND", "torch")
    monkeypatch.setenv("SGLANG_AMPERE_DECODE_BACKEND", "tilelang")
    monkeypatch.setattr(D, "ensure_flash_mla_interface", lambda: True)
    built = []
    monkeypatch.setattr(D, "precompile_tilelang", lambda: built.append(1))
    seen = []
    monkeypatch.setattr(D, "paged_impl", lambda name: (lambda **kw: seen.append((name, kw.get("use_legacy"))) or "o"))
    be = _FakeBackend.__new__(_FakeBackend)
    D.backend_init_hook(_FakeBackend.__init__, be, "runner", skip_prefill=False)
    assert be.init_args == (("runner",), {"skip_prefill": False})
    assert built == [1]                               # decode = tilelang: kernels built before capture
    assert D.is_applied(be)
    for mode in ("EXTEND", "MIXED", "DECODE", "TARGET_VERIFY"):
        D.forward_hook(_FakeBackend.forward, be, {"use_legacy": True}, None, None, None, _mode(mode))
    D.forward_hook(_FakeBackend.forward, be, {"use_legacy": False}, None, None, None, forward_batch=_mode("EXTEND"))
    assert seen == [("torch", True), ("torch", True), ("tilelang", True), ("tilelang", True), ("torch", False)]
    assert D.use_sparse_prefill_hook(_FakeBackend._use_sparse_prefill, be, None, num_qo_tokens=20000) is False
    assert D.create_flashmla_metadata_hook(lambda: pytest.fail("needs flash_mla")) is None


def test_torch_decode_builds_no_tilelang_kernels(ampere, monkeypatch):
    monkeypatch.setenv("SGLANG_AMPERE_DECODE_BACKEND", "torch")
    monkeypatch.setattr(D, "ensure_flash_mla_interface", lambda: True)
    monkeypatch.setattr(D, "precompile_tilelang", lambda: pytest.fail("must not compile"))
    be = _FakeBackend.__new__(_FakeBackend)
    D.backend_init_hook(_FakeBackend.__init__, be)
    assert D.is_applied(be)


def test_hooks_leave_hopper_alone(hopper):
    be = _FakeBackend.__new__(_FakeBackend)
    D.backend_init_hook(_FakeBackend.__init__, be)
    assert not D.is_applied(be)
    assert D.use_sparse_prefill_hook(_FakeBackend._use_sparse_prefill, be, None, num_qo_tokens=5) is True
    assert D.create_flashmla_metadata_hook(lambda: "meta") == "meta"


_SUBPROCESS = r"""
import json, sys
from sglang.srt.plugins.hook_registry import HookRegistry, HookType
from sglang_ampere.patches import dsv4_attention as D
D.needs_ampere_path = lambda: True          # the hooks look the function up at call time
for h in D.hooks():
    HookRegistry.register(h.target, h.fn, getattr(HookType, h.hook_type))
HookRegistry.apply_hooks()
import sglang.srt.layers.attention.deepseek_v4_backend as BE
res = {"meta": repr(BE._create_flashmla_metadata())}
res["stub"] = D.ensure_flash_mla_interface()
import sglang.kernels.ops.attention as A
res["stub_attr"] = getattr(A.flash_mla_interface, "sglang_ampere_stub", False)
be = BE.DeepseekV4AttnBackend.__new__(BE.DeepseekV4AttnBackend)
res["sparse"] = BE.DeepseekV4AttnBackend._use_sparse_prefill(be, None, num_qo_tokens=20000)
try:
    BE.DeepseekV4AttnBackend.__init__(be, None)
except Exception as e:                      # no model runner here: the original fails inside
    res["init_error"] = type(e).__name__
print("RESULT" + json.dumps(res))
"""


@pytest.mark.slow
def test_hooks_apply_to_sglang_0_5_23():
    """Register through SGLang's own HookRegistry and call the real (hooked) backend members."""
    res = run_with_sglang(_SUBPROCESS, {envvars.DECODE_BACKEND: "torch"})     # no kernel builds here
    assert res["meta"] == "None"
    assert res["sparse"] is False
    # flash_mla cannot load without a driver, so the stand-in module must be in place
    assert res["stub"] is True and res["stub_attr"] is True
    assert res["init_error"] in ("AttributeError", "TypeError")     # original ran (model_runner=None)


def test_forward_batch_is_found_by_name_in_the_signature():
    pytest.importorskip("sglang")
    import importlib

    real = importlib.import_module(D.BE).DeepseekV4AttnBackend.forward
    assert D.forward_batch_position(real) == 4                       # (q, k, v, layer, forward_batch, ...)

    def moved(self, forward_batch, q, k, v, layer):
        return None

    def gone(self, q, k, v, layer, batch):
        return None

    assert D.forward_batch_position(moved) == 0
    with pytest.raises(TypeError, match="has no forward_batch parameter"):
        D.forward_batch_position(gone)


def test_forward_hook_reads_a_moved_forward_batch(ampere):
    pytest.importorskip("sglang")
    be = types.SimpleNamespace()

    def moved(self, forward_batch, q, k, v, layer):
        return "ran"

    assert D.forward_hook(moved, be, _mode("EXTEND"), None, None, None, None) == "ran"
    assert getattr(be, D.PHASE_ATTR) == "prefill"
    D.forward_hook(moved, be, _mode("DECODE"), None, None, None, None)
    assert getattr(be, D.PHASE_ATTR) == "decode"
