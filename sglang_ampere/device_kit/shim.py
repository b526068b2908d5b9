"""What the vendored SGLang op wrappers import from ``sglang.kernels.jit.utils``, for a machine without SGLang.

The kit's ``sgl_ops/*.py`` are SGLang 0.5.23's own Python wrappers with their two SGLang imports
rewritten to this module. :func:`load_jit` does not compile: it loads the prebuilt module of the
same name (``sgl_kernel_jit_<args joined by _>``, SGLang's naming) from the kit's ``marlin/``
folder with ``tvm_ffi.load_module``, and says which one is missing otherwise. The module
registry can also be replaced (:func:`set_modules`), which is how the runner's dry run puts torch
stand-ins in place of the GPU modules.

Needs only the standard library (torch for :func:`make_cpp_args`' dtypes, tvm_ffi on first load).
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import Callable

_MODULE_NAME_PREFIX = "sgl_kernel_jit_"
_KIT_DIR: Path | None = None
_MODULES: dict[str, object] = {}
_LOADER: Callable[[str], object] | None = None


class KitModuleMissing(RuntimeError):
    """The kit has no prebuilt module of the name a wrapper asked for."""


def configure(kit_dir: Path) -> None:
    """Load modules from ``kit_dir/marlin`` from now on."""
    global _KIT_DIR
    _KIT_DIR = Path(kit_dir)
    _MODULES.clear()


def set_modules(modules: dict[str, object] | None, loader: Callable[[str], object] | None = None) -> None:
    """Serve these objects by module name (None: back to loading files); ``loader`` for other names."""
    global _LOADER
    _MODULES.clear()
    _MODULES.update(modules or {})
    _LOADER = loader


def module_name(*args) -> str:
    return _MODULE_NAME_PREFIX + "_".join(str(a) for a in args)


def cache_once(fn):
    """SGLang's ``cache_once``: memoise on the arguments."""
    results: dict = {}

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        key = (args, tuple(sorted(kwargs.items())))
        if key not in results:
            results[key] = fn(*args, **kwargs)
        return results[key]

    wrapper.cache_clear = results.clear          # type: ignore[attr-defined]
    return wrapper


def load_jit(*args, **_build_request):
    """The prebuilt module SGLang's ``load_jit(*args, ...)`` would have built and loaded."""
    name = module_name(*args)
    if name in _MODULES:
        return _MODULES[name]
    if _LOADER is not None:
        mod = _LOADER(name)
        _MODULES[name] = mod
        return mod
    if _KIT_DIR is None:
        raise KitModuleMissing(f"{name}: no kit configured (sglang_ampere.device_kit.shim.configure)")
    path = _KIT_DIR / "marlin" / f"{name}.so"
    if not path.exists():
        have = sorted(p.stem for p in (_KIT_DIR / "marlin").glob("*.so"))
        raise KitModuleMissing(f"the kit has no {name}.so (it has {have}); the runner asked for a "
                               "specialisation the kit was not built with")
    import tvm_ffi

    mod = tvm_ffi.load_module(str(path))
    _MODULES[name] = mod
    return mod


def _cpp_dtype(dtype) -> str:
    import torch

    table = {torch.float64: "double", torch.float32: "fp32_t", torch.float16: "fp16_t", torch.bfloat16: "bf16_t",
             torch.int8: "int8_t", torch.int16: "int16_t", torch.int32: "int32_t", torch.int64: "int64_t",
             torch.uint8: "uint8_t", torch.bool: "bool"}
    return table[dtype]


class CPPArgList(list):
    def __str__(self) -> str:
        return ", ".join(self)


def make_cpp_args(*args) -> CPPArgList:
    """SGLang's ``make_cpp_args`` for the argument kinds our wrappers pass (bools, numbers, dtypes)."""
    out = CPPArgList()
    for a in args:
        if isinstance(a, bool):
            out.append("true" if a else "false")
        elif isinstance(a, (int, str, float)):
            out.append(str(a))
        else:
            out.append(_cpp_dtype(a))
    return out


def debug_kernel_api(fn):
    """SGLang's API logging decorator: nothing to log here."""
    return fn


class _WarningOnce(logging.LoggerAdapter):
    _seen: set = set()

    def warning_once(self, msg, *args, **kwargs):
        if msg not in self._seen:
            self._seen.add(msg)
            self.warning(msg, *args, **kwargs)


def warning_once_logger(name: str) -> _WarningOnce:
    return _WarningOnce(logging.getLogger(name), {})
