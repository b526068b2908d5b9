"""The private HookRegistry members the plugin's adapter uses still exist in the pinned SGLang."""

import inspect

import pytest

pytest.importorskip("sglang")

from sglang_ampere import hook_registry


def test_private_members_exist_in_pinned_sglang():
    from sglang.srt.plugins.hook_registry import HookRegistry

    missing = [a for a in hook_registry.PRIVATE_ATTRS if not hasattr(HookRegistry, a)]
    assert not missing, f"SGLang's HookRegistry no longer has {missing}; update sglang_ampere/hook_registry.py"
    assert isinstance(HookRegistry._hooks, dict) and isinstance(HookRegistry._patched, set)
    assert list(inspect.signature(HookRegistry._apply_target).parameters) == ["target", "hooks"]
    # each registered entry is (hook type, function, source): is_registered unpacks three
    src = inspect.getsource(HookRegistry.register)
    assert "cls._hooks[target].append((hook_type, hook, resolved_source))" in src


def test_no_private_access_outside_the_adapter():
    from pathlib import Path

    root = Path(hook_registry.__file__).resolve().parents[1]
    offenders = []
    for base in ("sglang_ampere", "patches", "launch"):
        for p in (root / base).rglob("*.py"):
            if p.name == "hook_registry.py":
                continue
            text = p.read_text(encoding="utf-8")
            if any(f"HookRegistry.{a}" in text or f"reg.{a}" in text for a in hook_registry.PRIVATE_ATTRS):
                offenders.append(str(p.relative_to(root)))
    assert not offenders
