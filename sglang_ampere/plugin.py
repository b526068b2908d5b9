"""SGLang general-plugin entry point (group ``sglang.srt.plugins``, name ``sglang_ampere``).

SGLang calls :func:`register` in every process that matters (main, each scheduler/PP rank,
detokenizer), then applies the registered hooks -- and logs and swallows any exception from
either step. So ``register`` itself:

1. refuses an SGLang other than :data:`sglang_ampere.SGLANG_PIN` (unless
   ``SGLANG_AMPERE_ALLOW_ANY_SGLANG=1``): the patches are written against its source;
2. registers ``dsv4_int`` in ``QUANTIZATION_METHODS`` and in the ``--quantization`` choices;
3. registers every hook of every module in ``sglang_ampere.patches.PATCH_MODULES``;
4. applies its own hook targets (SGLang's ``apply_hooks`` after all plugins then skips them)
   and checks each hook function is really in the wrapper chain on its target;
5. reports any hook that is not, by module and target, as an error: logged at ERROR, raised
   as :class:`PluginError`, and remembered in :data:`FAILED_HOOKS`. ``Dsv4IntConfig`` re-runs
   :func:`verify_hooks` when the model is built (after SGLang applied every plugin's hooks)
   and refuses to build it if any hook is missing -- an error SGLang does not swallow.

Calling it again in the same process does nothing new (idempotent).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import logging
import pkgutil

from . import QUANT_METHOD, SGLANG_PIN, envvars

logger = logging.getLogger("sglang_ampere")

#: "module: target (why)" for every hook that did not take effect in this process.
FAILED_HOOKS: list[str] = []

_HOOK_TYPES = ("BEFORE", "AFTER", "AROUND", "REPLACE")


class PluginError(RuntimeError):
    """sglang_ampere could not install itself into this SGLang."""


def check_sglang_version() -> str:
    """The installed SGLang version; a PluginError if it is not the pinned one."""
    try:
        installed = importlib.metadata.version("sglang")
    except importlib.metadata.PackageNotFoundError as e:
        raise PluginError("sglang is not installed; install it with `pip install sglang-ampere[serve]`") from e
    if installed != SGLANG_PIN and envvars.get("SGLANG_AMPERE_ALLOW_ANY_SGLANG") != "1":
        raise PluginError(
            f"sglang_ampere is written for SGLang {SGLANG_PIN}, but SGLang {installed} is installed. "
            f"Install the pinned release (`pip install sglang=={SGLANG_PIN}`), or set "
            "SGLANG_AMPERE_ALLOW_ANY_SGLANG=1 to try anyway (unsupported: the patches may miss their targets)."
        )
    return installed


def register_quantization_choice() -> None:
    """Add ``dsv4_int`` to SGLang's ``--quantization`` choices (light: no model code; the
    launcher calls it before it builds SGLang's argument parser)."""
    from sglang.srt.arg_groups.choices import QUANTIZATION_CHOICES, add_quantization_method_choices

    if QUANT_METHOD not in QUANTIZATION_CHOICES:
        add_quantization_method_choices([QUANT_METHOD])


def register_quantization() -> None:
    from sglang.srt.layers.quantization import QUANTIZATION_METHODS

    from .quant.config import Dsv4IntConfig

    QUANTIZATION_METHODS[QUANT_METHOD] = Dsv4IntConfig
    register_quantization_choice()


def collect_hooks(module_names: list[str] | None = None):
    """``[(module, Hook)]`` of every patch module; a module that fails to import or whose
    ``hooks()`` fails is reported as a failed hook under its module name."""
    from .patches import PATCH_MODULES, Hook

    out, failed = [], []
    for mod_name in PATCH_MODULES if module_names is None else module_names:
        try:
            module = importlib.import_module(mod_name)
            for hook in module.hooks():
                if not isinstance(hook, Hook) or hook.hook_type not in _HOOK_TYPES:
                    raise TypeError(f"hooks() returned {hook!r}; expected patches.Hook with hook_type in {_HOOK_TYPES}")
                out.append((mod_name, hook))
        except Exception as e:  # noqa: BLE001 - reported by name below
            failed.append(f"{mod_name}: could not load its hooks ({type(e).__name__}: {e})")
    return out, failed


def hook_in_effect(target: str, fn) -> bool:
    """Whether ``fn`` is in the wrapper chain now bound at ``target`` (or is the target,
    for a class/function REPLACE)."""
    obj_path, _, attr = target.rpartition(".")
    try:
        owner = pkgutil.resolve_name(obj_path)
        current = owner.__dict__.get(attr) if isinstance(owner, type) else None
        if current is None:
            current = getattr(owner, attr)
    except Exception:  # noqa: BLE001 - an unresolvable target is simply "not in effect"
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


#: Every hook this process registered, as (patch module, Hook); re-verified by verify_hooks().
_INSTALLED: list = []


def _apply_targets(targets: list[str]) -> None:
    """Apply the hooks of these targets only, as ``HookRegistry.apply_hooks`` does per target.

    Applying every registered target here would mark other plugins' targets as patched before
    plugins that load after us could add their hooks to them; so only our targets are applied
    now, and SGLang's own ``apply_hooks`` (right after all plugins ran) does the rest. A target
    that fails is left unpatched, and verification reports it.
    """
    from sglang.srt.plugins.hook_registry import HookRegistry

    items = [(t, HookRegistry._hooks[t]) for t in dict.fromkeys(targets) if t not in HookRegistry._patched]
    for target, hooks in sorted(items, key=HookRegistry._target_sort_key):
        try:
            HookRegistry._apply_target(target, hooks)
            HookRegistry._patched.add(target)
        except Exception as e:  # noqa: BLE001 - reported by verification, by name
            logger.error("sglang_ampere: applying hooks to %s failed: %s: %s", target, type(e).__name__, e)


def verify_hooks() -> list[str]:
    """Re-check every hook registered by this process; updates and returns FAILED_HOOKS.

    ``Dsv4IntConfig`` calls this when the model is built, i.e. after SGLang applied all
    plugins' hooks, so a hook undone later (e.g. another plugin's class REPLACE) is caught too.
    """
    failed = list(_LOAD_FAILURES)
    for mod_name, hook in _INSTALLED:
        if not hook_in_effect(hook.target, hook.fn):
            failed.append(f"{mod_name}: {hook.target} ({hook.hook_type}: {hook.why})")
    FAILED_HOOKS[:] = failed
    return failed


_LOAD_FAILURES: list[str] = []


def install_hooks(module_names: list[str] | None = None) -> tuple[int, list[str]]:
    """Register, apply and verify the hooks; returns (number of hooks, failures)."""
    from sglang.srt.plugins.hook_registry import HookRegistry, HookType

    hooks, load_failures = collect_hooks(module_names)
    for _, hook in hooks:
        already = any(h is hook.fn for _, h, _ in HookRegistry._hooks.get(hook.target, ()))
        if not already:
            HookRegistry.register(hook.target, hook.fn, HookType[hook.hook_type])
    _apply_targets([hook.target for _, hook in hooks])
    _INSTALLED[:] = hooks
    _LOAD_FAILURES[:] = load_failures
    return len(hooks), verify_hooks()


def register(module_names: list[str] | None = None) -> None:
    """The entry point. ``module_names`` overrides ``PATCH_MODULES`` (tests use it)."""
    try:
        version = check_sglang_version()
    except PluginError as e:
        logger.error("%s", e)
        raise
    register_quantization()
    n_hooks, failed = install_hooks(module_names)
    if failed:
        msg = (
            f"sglang_ampere: {len(failed)} hook(s) did not take effect on SGLang {version}:\n  "
            + "\n  ".join(failed)
            + "\nThe patched behaviour is missing; loading a dsv4_int model will be refused. "
            "Check that SGLang is the pinned release and that no other plugin replaces these targets."
        )
        logger.error("%s", msg)
        raise PluginError(msg)
    logger.info("sglang_ampere: dsv4_int registered, %d hook(s) in effect (SGLang %s)", n_hooks, version)
