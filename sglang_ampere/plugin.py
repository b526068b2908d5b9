"""SGLang general-plugin entry point (group ``sglang.srt.plugins``, name ``sglang_ampere``).

SGLang calls :func:`register` in every process that matters (main, each scheduler/PP rank,
detokenizer), then applies the registered hooks -- and logs and swallows any exception from
either step. So ``register`` itself:

1. refuses an SGLang other than :data:`sglang_ampere.SGLANG_PIN` (unless
   ``SGLANG_AMPERE_ALLOW_ANY_SGLANG=1``; :func:`.sglang_pin.pin_problem`, which ``doctor`` asks
   too): the patches are written against its source;
2. registers ``dsv4_int`` in ``QUANTIZATION_METHODS`` and in the ``--quantization`` choices;
3. registers every hook of every module in ``sglang_ampere.patches.PATCH_MODULES``;
4. applies its own hook targets (SGLang's ``apply_hooks`` after all plugins then skips them)
   and checks each hook function is really in the wrapper chain on its target;
5. reports any hook that is not, by module and target, as an error: logged at ERROR, raised
   as :class:`PluginError`, and remembered in :mod:`.hook_state` (``FAILED_HOOKS``).
   ``Dsv4IntConfig`` re-runs ``hook_state.verify_hooks`` when the model is built (after SGLang
   applied every plugin's hooks) and refuses to build it if any hook is missing -- an error
   SGLang does not swallow.

SGLang's private ``HookRegistry`` state is touched only through :mod:`.hook_registry`.

Calling it again in the same process does nothing new (idempotent).
"""

from __future__ import annotations

import importlib
import logging

from . import QUANT_METHOD, envvars, hook_registry, hook_state, sglang_pin

# Re-exported: the hook status lives in hook_state, which the quant config reads without
# importing this module.
from .hook_state import FAILED_HOOKS, hook_in_effect, verify_hooks

__all__ = ["FAILED_HOOKS", "PluginError", "check_sglang_version", "collect_hooks", "hook_in_effect",
           "install_hooks", "register", "register_quantization", "register_quantization_choice", "verify_hooks"]

logger = logging.getLogger("sglang_ampere")

_HOOK_TYPES = ("BEFORE", "AFTER", "AROUND", "REPLACE")


class PluginError(RuntimeError):
    """sglang_ampere could not install itself into this SGLang."""


def check_sglang_version() -> str:
    """The installed SGLang version; a PluginError if :func:`.sglang_pin.pin_problem` says it is
    wrong (a mismatch allowed by ``SGLANG_AMPERE_ALLOW_ANY_SGLANG=1`` is only logged)."""
    installed = sglang_pin.installed_version()
    problem = sglang_pin.pin_problem(installed)
    if problem is None:
        return installed
    if problem.level != "error":
        logger.warning("%s", problem.text)
        return installed
    if installed is None:
        raise PluginError(f"{problem.text}; install it with `pip install sglang-ampere[serve]`")
    raise PluginError(
        f"{problem.text}. Install the pinned release (`{sglang_pin.install_command()}`), or set "
        f"{envvars.ALLOW_ANY_SGLANG}=1 to try anyway (unsupported: the patches may miss their targets)."
    )


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
        except Exception as e:  # reported by name below
            failed.append(f"{mod_name}: could not load its hooks ({type(e).__name__}: {e})")
    return out, failed


def install_hooks(module_names: list[str] | None = None) -> tuple[int, list[str]]:
    """Register, apply and verify the hooks; returns (number of hooks, failures)."""
    hooks, load_failures = collect_hooks(module_names)
    for _, hook in hooks:
        if not hook_registry.is_registered(hook.target, hook.fn):
            hook_registry.register(hook.target, hook.fn, hook.hook_type)
    hook_registry.apply_targets(hook.target for _, hook in hooks)
    hook_state.INSTALLED[:] = hooks
    hook_state.LOAD_FAILURES[:] = load_failures
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
