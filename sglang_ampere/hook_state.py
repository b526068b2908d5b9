"""Which sglang_ampere hooks this process installed, and whether they are still in effect.

The plugin (:mod:`sglang_ampere.plugin`) fills this module when SGLang loads it; the dsv4_int
quantization config reads it when the model is built (it re-verifies, since another plugin may
have undone a hook after ours were applied). Neither imports the other. No SGLang import here
beyond resolving the hooked targets themselves.
"""

from __future__ import annotations

import pkgutil

#: "module: target (why)" for every hook that did not take effect in this process.
FAILED_HOOKS: list[str] = []
#: Every hook this process registered, as (patch module, ``patches.Hook``).
INSTALLED: list = []
#: Patch modules whose hooks could not even be collected ("module: could not load ...").
LOAD_FAILURES: list[str] = []


def hook_in_effect(target: str, fn) -> bool:
    """Whether ``fn`` is in the wrapper chain now bound at ``target`` (or is the target,
    for a class/function REPLACE)."""
    obj_path, _, attr = target.rpartition(".")
    try:
        owner = pkgutil.resolve_name(obj_path)
        current = owner.__dict__.get(attr) if isinstance(owner, type) else None
        if current is None:
            current = getattr(owner, attr)
    except Exception:  # an unresolvable target is simply "not in effect"
        return False
    if isinstance(current, (classmethod, staticmethod)):
        current = current.__func__
    for _ in range(64):
        if current is None:
            return False
        if current is fn:
            return True
        for cell in getattr(current, "__closure__", None) or ():
            try:
                if cell.cell_contents is fn:
                    return True
            except ValueError:          # empty cell
                continue
        current = getattr(current, "__wrapped__", None)
    return False


def verify_hooks() -> list[str]:
    """Re-check every hook registered by this process; updates and returns :data:`FAILED_HOOKS`."""
    failed = list(LOAD_FAILURES)
    for mod_name, hook in INSTALLED:
        if not hook_in_effect(hook.target, hook.fn):
            failed.append(f"{mod_name}: {hook.target} ({hook.hook_type}: {hook.why})")
    FAILED_HOOKS[:] = failed
    return failed
