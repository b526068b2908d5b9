"""The one adapter over SGLang 0.5.23's ``HookRegistry`` internals that the plugin needs.

SGLang's public API is ``HookRegistry.register`` and ``HookRegistry.apply_hooks`` (all targets
at once). The plugin must apply *its own* targets early (so it can verify them before SGLang
swallows errors) and must not register a hook twice, which needs the registry's private state:
:data:`PRIVATE_ATTRS`. Every such access is in this module, and ``tests/test_hook_registry.py``
checks that the pinned SGLang still has each attribute.
"""

from __future__ import annotations

import logging
from typing import Callable, Iterable

logger = logging.getLogger("sglang_ampere")

#: The private ``HookRegistry`` members used here (class attributes / classmethods of 0.5.23).
PRIVATE_ATTRS = ("_hooks", "_patched", "_apply_target", "_target_sort_key")


def _registry():
    from sglang.srt.plugins.hook_registry import HookRegistry

    return HookRegistry


def is_registered(target: str, fn: Callable) -> bool:
    """Whether ``fn`` is already registered (any hook type) on ``target``."""
    return any(h is fn for _, h, _ in _registry()._hooks.get(target, ()))


def registered_count(target: str) -> int:
    """How many hooks (of every plugin) are registered on ``target``."""
    return len(_registry()._hooks.get(target, ()))


def register(target: str, fn: Callable, hook_type: str) -> None:
    """``HookRegistry.register`` with the hook type by name (``BEFORE``/``AFTER``/``AROUND``/``REPLACE``)."""
    from sglang.srt.plugins.hook_registry import HookType

    _registry().register(target, fn, HookType[hook_type])


def apply_targets(targets: Iterable[str]) -> None:
    """Apply the hooks of these targets only, as ``HookRegistry.apply_hooks`` does per target.

    Applying every registered target here would mark other plugins' targets as patched before
    plugins that load after us could add their hooks to them; so only these targets are applied
    now, and SGLang's own ``apply_hooks`` (right after all plugins ran) does the rest (it skips
    targets already patched). A target that fails is logged and left unpatched; the caller's
    verification reports it.
    """
    reg = _registry()
    items = [(t, reg._hooks[t]) for t in dict.fromkeys(targets) if t not in reg._patched and t in reg._hooks]
    for target, hooks in sorted(items, key=reg._target_sort_key):
        try:
            reg._apply_target(target, hooks)
            reg._patched.add(target)
        except Exception as e:  # reported by verification, by name
            logger.error("sglang_ampere: applying hooks to %s failed: %s: %s", target, type(e).__name__, e)
