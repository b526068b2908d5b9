"""The SGLang plugin: entry-point discovery in fresh processes, registration, hook
verification (a hook that cannot take effect is reported by name), version pin."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("sglang")

PY = sys.executable


def _run(code: str, env_extra: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, **(env_extra or {})}
    return subprocess.run([PY, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=env, timeout=timeout)


@pytest.mark.slow
def test_fresh_process_discovers_plugin_through_entry_points():
    """What SGLang does in every process: load_plugins() (entry points) then apply_hooks()."""
    r = _run("""
        import json
        from sglang.srt.plugins import load_plugins
        load_plugins()
        from sglang.srt.layers.quantization import QUANTIZATION_METHODS
        from sglang.srt.arg_groups.choices import QUANTIZATION_CHOICES
        import sglang.srt.models.deepseek_v4 as dsv4
        from sglang_ampere import plugin
        from sglang_ampere.patches import PATCH_MODULES
        from sglang_ampere.patches import dsv4_loader
        print("RESULT " + json.dumps({
            "registered": QUANTIZATION_METHODS.get("dsv4_int").__name__,
            "choice": "dsv4_int" in QUANTIZATION_CHOICES,
            "loader_hook": plugin.hook_in_effect(dsv4_loader.TARGET, dsv4_loader.prepare_weights),
            "failed": plugin.FAILED_HOOKS,
            "modules": PATCH_MODULES,
        }))
    """)
    line = [ln for ln in r.stdout.splitlines() if ln.startswith("RESULT ")]
    assert line, f"no result; stderr:\n{r.stderr[-3000:]}"
    res = json.loads(line[0][len("RESULT "):])
    assert res["registered"] == "Dsv4IntConfig"
    assert res["choice"] is True
    assert res["loader_hook"] is True
    assert res["failed"] == [], res["failed"]
    assert "sglang_ampere.patches.dsv4_loader" in res["modules"]


@pytest.mark.slow
def test_launch_server_help_lists_dsv4_int():
    r = subprocess.run([PY, "-m", "sglang.launch_server", "--help"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    quant_help = r.stdout[r.stdout.index("--quantization"):]
    assert "dsv4_int" in quant_help[:4000]


def test_register_is_idempotent_and_registers_everything():
    from sglang.srt.arg_groups.choices import QUANTIZATION_CHOICES
    from sglang.srt.layers import linear
    from sglang.srt.layers.quantization import QUANTIZATION_METHODS

    from sglang_ampere import hook_registry, plugin
    from sglang_ampere.patches import dsv4_loader
    from sglang_ampere.quant.config import Dsv4IntConfig

    plugin.register()
    n_hooks = hook_registry.registered_count(dsv4_loader.TARGET)
    plugin.register()
    assert hook_registry.registered_count(dsv4_loader.TARGET) == n_hooks        # not registered twice
    assert QUANTIZATION_METHODS["dsv4_int"] is Dsv4IntConfig
    assert QUANTIZATION_CHOICES.count("dsv4_int") == 1
    assert plugin.FAILED_HOOKS == []
    assert plugin.hook_in_effect(dsv4_loader.TARGET, dsv4_loader.prepare_weights)
    Dsv4IntConfig.__init__.__globals__["_ensure_weight_loader_v2"]()
    assert "Dsv4Int8LinearMethod" in linear.WEIGHT_LOADER_V2_SUPPORTED


def test_hook_with_missing_target_is_reported_by_name(tmp_path, monkeypatch):
    """SGLang only logs a hook it cannot apply; register() must name it as an error, and the
    dsv4_int config must then refuse to build a model."""
    (tmp_path / "bogus_patch.py").write_text(textwrap.dedent('''
        """Target: sglang.srt.models.deepseek_v4._no_such_function (test only)."""
        from sglang_ampere.patches import Hook

        def _hook(original, *a, **k):
            return original(*a, **k)

        def hooks():
            return [Hook("sglang.srt.models.deepseek_v4._no_such_function", _hook, "AROUND", "test")]
    '''))
    monkeypatch.syspath_prepend(str(tmp_path))
    from sglang_ampere import plugin

    try:
        with pytest.raises(plugin.PluginError) as e:
            plugin.register(["sglang_ampere.patches.dsv4_loader", "bogus_patch"])
        assert "sglang.srt.models.deepseek_v4._no_such_function" in str(e.value)
        assert "bogus_patch" in str(e.value)
        assert "dsv4_loader" not in str(e.value)                        # the good hook is fine
        assert any("_no_such_function" in f for f in plugin.FAILED_HOOKS)

        from helpers.dsv4int import published_quant_config

        from sglang_ampere.quant.config import Dsv4IntConfig, Dsv4IntError
        from sglang_ampere.schema import parse_quantization_config

        with pytest.raises(Dsv4IntError, match="_no_such_function"):
            Dsv4IntConfig(parse_quantization_config(published_quant_config("block")), {})
    finally:
        plugin.register()                                               # restore a clean state
    assert plugin.FAILED_HOOKS == []


def test_hook_in_effect_detects_unhooked_targets():
    from sglang_ampere import plugin

    def fn(original, *a, **k):
        return original(*a, **k)

    assert not plugin.hook_in_effect("sglang.srt.models.deepseek_v4._dequant_fp8", fn)
    assert not plugin.hook_in_effect("sglang.srt.models.no_such_module.fn", fn)


def test_other_sglang_version_is_a_clear_error_unless_allowed(monkeypatch):
    from sglang_ampere import plugin, sglang_pin

    monkeypatch.setattr(sglang_pin, "SGLANG_PIN", "0.0.1")
    monkeypatch.delenv("SGLANG_AMPERE_ALLOW_ANY_SGLANG", raising=False)
    with pytest.raises(plugin.PluginError, match=r"written for SGLang 0\.0\.1.*SGLANG_AMPERE_ALLOW_ANY_SGLANG=1"):
        plugin.register()
    monkeypatch.setenv("SGLANG_AMPERE_ALLOW_ANY_SGLANG", "1")
    assert plugin.check_sglang_version() == "0.5.23"


def test_every_patch_module_states_target_hook_why_and_version():
    import importlib

    from sglang_ampere.patches import PATCH_MODULES

    for name in PATCH_MODULES:
        doc = importlib.import_module(name).__doc__ or ""
        for word in ("Target", "Hook", "Why", "SGLang"):
            assert word.lower() in doc.lower(), f"{name}: docstring lacks '{word}'"
        assert "0.5.23" in doc, f"{name}: docstring does not name the SGLang version"


def test_hook_undone_after_registration_is_caught_when_the_model_is_built():
    """Verification is repeated by Dsv4IntConfig, i.e. after SGLang applied every plugin's
    hooks: a hook removed later (e.g. by another plugin's REPLACE) still stops the load."""
    import sglang.srt.models.deepseek_v4 as dsv4
    from helpers.dsv4int import published_quant_config

    from sglang_ampere import plugin
    from sglang_ampere.patches import dsv4_loader
    from sglang_ampere.quant.config import Dsv4IntConfig, Dsv4IntError
    from sglang_ampere.schema import parse_quantization_config

    plugin.register()
    wrapped = dsv4._prepare_deepseek_v4_weights
    dsv4._prepare_deepseek_v4_weights = wrapped.__wrapped__          # someone undoes our hook
    try:
        with pytest.raises(Dsv4IntError, match=dsv4_loader.TARGET.replace(".", r"\.")):
            Dsv4IntConfig(parse_quantization_config(published_quant_config("block")), {})
    finally:
        dsv4._prepare_deepseek_v4_weights = wrapped
    assert plugin.verify_hooks() == []
    Dsv4IntConfig(parse_quantization_config(published_quant_config("block")), {})


def test_patches_readme_lists_every_hooked_target():
    from helpers import REPO

    from sglang_ampere import plugin

    readme = (REPO / "patches" / "README.md").read_text()
    hooks, failed = plugin.collect_hooks()
    assert not failed, failed
    missing = [h.target for _, h in hooks if f"`{h.target}`" not in readme]
    assert not missing, f"patches/README.md does not list: {missing}"
