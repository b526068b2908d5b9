"""What ``doctor`` needs to know from a fresh interpreter: do the patches' hook targets resolve, does
SGLang register ``dsv4_int`` when it loads its plugins, does the native checkpoint's path import,
does TileLang import. SGLang loads plugins once per process, hence a process of its own::

    python -m sglang_ampere.sglang_probe

prints one line ``@@DOCTOR@@{json}`` (after whatever SGLang prints); :func:`run` starts it and
reads that line back. Importing this module is cheap (no SGLang): ``doctor`` reads the constants.
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Callable, Mapping

from . import QUANT_METHOD

MARKER = "@@DOCTOR@@"
#: What the native checkpoint's path below sm_90 runs through in SGLang 0.5.23.
NATIVE_TARGETS = (
    "sglang.srt.layers.quantization.mxfp4_marlin_moe.Mxfp4MarlinMoEMethod.process_weights_after_loading",
    "sglang.srt.layers.quantization.marlin_utils_fp4.prepare_moe_mxfp4_layer_for_marlin",
    "sglang.srt.layers.quantization.marlin_utils_fp8.prepare_fp8_layer_for_marlin",
    "sglang.srt.layers.quantization.fp8_utils.can_auto_enable_marlin_fp8",
    "sglang.srt.models.deepseek_v4.wo_a_fp8_gemm_enabled",
)
#: The patch module that lifts Mxfp4MarlinMoEMethod's SM90/SM120 gate.
NATIVE_PATCH = "sglang_ampere.patches.dsv4_native"
#: The message of that gate in SGLang 0.5.23 (the probe reports whether it is still there).
NATIVE_GATE = "MXFP4 Marlin requires SM90 or SM120"


def _error(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def _resolve(target: str) -> tuple[object, str | None]:
    import pkgutil

    try:
        return pkgutil.resolve_name(target), None
    except Exception as exc:  # reported per target
        return None, _error(exc)


def _hook_targets(out: dict) -> None:
    import importlib

    from .patches import PATCH_MODULES

    for mod_name in PATCH_MODULES:
        try:
            hooks = importlib.import_module(mod_name).hooks()
        except Exception as exc:  # reported per module
            out["patch_errors"].append([mod_name, _error(exc)])
            continue
        out["targets"] += [[mod_name, h.target, _resolve(h.target)[1]] for h in hooks]


def _registration(out: dict) -> None:
    from sglang.srt.plugins import load_plugins

    load_plugins()
    from sglang.srt.arg_groups.choices import QUANTIZATION_CHOICES
    from sglang.srt.layers.quantization import QUANTIZATION_METHODS

    out["registered"] = QUANT_METHOD in QUANTIZATION_METHODS
    out["cli_choice"] = QUANT_METHOD in QUANTIZATION_CHOICES


def _native_path(out: dict) -> None:
    import inspect

    from .patches import PATCH_MODULES

    native = out["native"] = {"targets": [], "patched": NATIVE_PATCH in PATCH_MODULES, "gate": None, "marlin": None}
    for target in NATIVE_TARGETS:
        obj, err = _resolve(target)
        native["targets"].append([target, err])
        if err is None and target.endswith(".process_weights_after_loading"):
            native["gate"] = NATIVE_GATE in inspect.getsource(obj)
    try:
        from sglang.srt.layers.moe.utils import MoeRunnerBackend

        native["marlin"] = MoeRunnerBackend("marlin").is_marlin()
    except Exception as exc:  # reported as the native path's problem
        native["marlin_error"] = _error(exc)


def _tilelang(out: dict) -> None:
    import tilelang

    out["tilelang"] = getattr(tilelang, "__version__", "unknown")


def _attempt(out: dict, key: str, step: Callable[[dict], None]) -> bool:
    """Run one step; its exception becomes ``out[key]``."""
    try:
        step(out)
        return True
    except Exception as exc:  # the report names it
        out[key] = _error(exc)
        return False


def probe() -> dict:
    """The report (see the module docstring); SGLang's warnings while loading plugins in ``plugin_log``."""
    import io
    import logging

    out = {"targets": [], "patch_errors": [], "registered": False, "cli_choice": False,
           "plugin_log": "", "error": None, "tilelang": None}
    log = io.StringIO()
    handler = logging.StreamHandler(log)
    handler.setLevel(logging.WARNING)
    logging.getLogger().addHandler(handler)
    if _attempt(out, "error", _hook_targets) and _attempt(out, "error", _registration):
        _attempt(out, "error", _native_path)
    _attempt(out, "tilelang_error", _tilelang)
    out["plugin_log"] = log.getvalue()[-2000:]
    return out


def run(environ: Mapping[str, str], timeout: float = 300) -> dict:
    """:func:`probe` in a fresh interpreter with ``environ``; ``{"error": ...}`` if it gave no report."""
    try:
        proc = subprocess.run([sys.executable, "-m", __name__], capture_output=True, text=True,
                              timeout=timeout, env=dict(environ))
    except subprocess.TimeoutExpired:
        return {"error": f"the probe process did not finish in {timeout:.0f} s"}
    for line in proc.stdout.splitlines():
        if line.startswith(MARKER):
            return json.loads(line[len(MARKER):])
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
    return {"error": f"probe exited {proc.returncode}: " + " | ".join(tail)}


if __name__ == "__main__":
    print(MARKER + json.dumps(probe()))
