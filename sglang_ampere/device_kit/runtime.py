"""Launch a prebuilt cubin from its launch manifest through the CUDA driver API (ctypes only).

What a bare GPU machine has is torch and the NVIDIA driver: no TileLang, no TVM runtime. The
kit's TileLang kernels are therefore plain cubins plus a manifest (:mod:`.manifest`), and
:class:`CubinKernel` does what TileLang's host code does around the launch:

* the checks TVM's packed-function wrapper makes on every tensor: device, dtype, rank, each
  static dimension, one value per symbolic dimension across all tensors, compact strides;
* the arguments in the device function's order: each pointer parameter gets its tensor's
  ``data_ptr()``, each ``int32`` parameter the dimension of the tensor it is bound to;
* ``cuFuncSetAttribute(MAX_DYNAMIC_SHARED_SIZE_BYTES)`` once, then ``cuLaunchKernel`` with the
  manifest's grid (evaluated from the tensors' shapes), block and dynamic shared memory on
  torch's current stream.

The driver calls go through :class:`Driver`, a thin ctypes binding of ``libcuda.so.1`` (or any
library with the same symbols: the CPU tests load a fake one that records its calls). It makes
torch's primary context current before loading a module. A kernel is called like TileLang's
compiled kernel: ``kernel(*tensors)`` with the prim_func's tensors in order (outputs included).

Importing this module needs only the standard library; torch is imported on first use.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from pathlib import Path
from typing import Callable, Sequence

from .. import envvars
from .manifest import KernelManifest

#: CUfunction_attribute CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES.
MAX_DYNAMIC_SHARED_SIZE_BYTES = 8
#: Dynamic shared memory above this needs the opt-in attribute.
DEFAULT_DYNAMIC_SHARED = 48 * 1024
INT32_MAX = 2 ** 31 - 1


class DriverError(RuntimeError):
    """A CUDA driver call returned an error (the message names the call and the error)."""


class LaunchError(ValueError):
    """The tensors do not fit the kernel's manifest (what TVM's host checks would refuse)."""


class Driver:
    """The handful of CUDA driver entry points a cubin launch needs, bound with ctypes."""

    def __init__(self, library: str | os.PathLike | None = None):
        path = str(library) if library else envvars.get(envvars.LIBCUDA)
        self.lib = ctypes.CDLL(path)
        self.path = path
        L, vp, i32, u32 = self.lib, ctypes.c_void_p, ctypes.c_int, ctypes.c_uint
        sig = {
            "cuInit": [u32],
            "cuDeviceGet": [ctypes.POINTER(i32), i32],
            "cuCtxGetCurrent": [ctypes.POINTER(vp)],
            "cuCtxSetCurrent": [vp],
            "cuDevicePrimaryCtxRetain": [ctypes.POINTER(vp), i32],
            "cuModuleLoadData": [ctypes.POINTER(vp), ctypes.c_char_p],
            "cuModuleGetFunction": [ctypes.POINTER(vp), vp, ctypes.c_char_p],
            "cuFuncSetAttribute": [vp, i32, i32],
            "cuLaunchKernel": [vp, u32, u32, u32, u32, u32, u32, u32, vp, ctypes.POINTER(vp), ctypes.POINTER(vp)],
            "cuGetErrorName": [i32, ctypes.POINTER(ctypes.c_char_p)],
        }
        for name, args in sig.items():
            fn = getattr(L, name)
            fn.argtypes, fn.restype = args, i32
        self._initialised = False

    def check(self, rc: int, call: str) -> None:
        if rc != 0:
            name = ctypes.c_char_p()
            self.lib.cuGetErrorName(rc, ctypes.byref(name))
            raise DriverError(f"{call} failed: {name.value.decode() if name.value else 'CUDA error'} ({rc})")

    def init(self) -> None:
        if not self._initialised:
            self.check(self.lib.cuInit(0), "cuInit")
            self._initialised = True

    def ensure_context(self, ordinal: int) -> int:
        """Make a context current on this thread (torch's primary context if it has none yet)."""
        self.init()
        ctx = ctypes.c_void_p()
        self.check(self.lib.cuCtxGetCurrent(ctypes.byref(ctx)), "cuCtxGetCurrent")
        if ctx.value:
            return ctx.value
        dev = ctypes.c_int()
        self.check(self.lib.cuDeviceGet(ctypes.byref(dev), ordinal), "cuDeviceGet")
        self.check(self.lib.cuDevicePrimaryCtxRetain(ctypes.byref(ctx), dev.value), "cuDevicePrimaryCtxRetain")
        self.check(self.lib.cuCtxSetCurrent(ctx), "cuCtxSetCurrent")
        return ctx.value

    def load(self, image: bytes, entry: str) -> tuple[int, int]:
        """``(module, function)`` handles of ``entry`` in a cubin image."""
        mod, fn = ctypes.c_void_p(), ctypes.c_void_p()
        self._image = image            # the driver copies it, but keep it alive across the call
        self.check(self.lib.cuModuleLoadData(ctypes.byref(mod), image), "cuModuleLoadData")
        self.check(self.lib.cuModuleGetFunction(ctypes.byref(fn), mod, entry.encode()),
                   f"cuModuleGetFunction({entry})")
        return mod.value, fn.value

    def set_max_dynamic_shared(self, fn: int, nbytes: int) -> None:
        self.check(self.lib.cuFuncSetAttribute(ctypes.c_void_p(fn), MAX_DYNAMIC_SHARED_SIZE_BYTES, int(nbytes)),
                   f"cuFuncSetAttribute(MAX_DYNAMIC_SHARED_SIZE_BYTES, {nbytes})")

    def launch(self, fn: int, grid: Sequence[int], block: Sequence[int], shared: int, stream: int,
               values: Sequence[ctypes._SimpleCData]) -> None:
        params = (ctypes.c_void_p * max(1, len(values)))(*[ctypes.addressof(v) for v in values])
        self.check(self.lib.cuLaunchKernel(ctypes.c_void_p(fn), *(int(g) for g in grid), *(int(b) for b in block),
                                           int(shared), ctypes.c_void_p(stream), params, None),
                   "cuLaunchKernel")


_DRIVER: Driver | None = None


def driver() -> Driver:
    """The process's :class:`Driver` on ``libcuda.so.1`` (``SGLANG_AMPERE_LIBCUDA`` overrides the path)."""
    global _DRIVER
    if _DRIVER is None:
        _DRIVER = Driver()
    return _DRIVER


def _torch_stream(device) -> int:
    import torch

    return int(torch.cuda.current_stream(device).cuda_stream)


class CubinKernel:
    """One kernel of the kit: ``kernel(*tensors)`` checks and launches like TileLang's compiled one."""

    def __init__(self, manifest: KernelManifest, cubin: bytes | Path, drv: Driver | None = None,
                 stream: Callable[[object], int] = _torch_stream, require_cuda: bool = True):
        self.m = manifest
        self.image = cubin if isinstance(cubin, bytes) else Path(cubin).read_bytes()
        self._driver = drv
        self._stream = stream
        self._require_cuda = require_cuda
        self._fn: dict[int, int] = {}       # device ordinal -> CUfunction

    def __repr__(self) -> str:
        return f"CubinKernel({self.m.name} -> {self.m.entry})"

    @property
    def driver(self) -> Driver:
        return self._driver or driver()

    def bind(self, tensors: Sequence) -> dict[str, int]:
        """Check ``tensors`` against the manifest; returns the value of every symbolic dimension."""
        m = self.m
        if len(tensors) != len(m.tensors):
            raise LaunchError(f"{m.name}: {len(tensors)} tensors given, the kernel takes {len(m.tensors)} "
                              f"({', '.join(t.name for t in m.tensors)})")
        sym: dict[str, int] = {}
        device = None
        for spec, t in zip(m.tensors, tensors):
            where = f"{m.name}: {spec.name}"
            if not hasattr(t, "data_ptr") or not hasattr(t, "dtype"):
                raise LaunchError(f"{where} must be a torch tensor, got {type(t).__name__}")
            if self._require_cuda and t.device.type != "cuda":
                raise LaunchError(f"{where} is on {t.device}, not on a CUDA device")
            if device is None:
                device = t.device
            elif t.device != device:
                raise LaunchError(f"{where} is on {t.device}, the other tensors on {device}")
            dtype = str(t.dtype).removeprefix("torch.")
            if dtype != spec.dtype:
                raise LaunchError(f"{where} has dtype {dtype}, expected {spec.dtype}")
            if t.dim() != len(spec.shape):
                raise LaunchError(f"{where} has {t.dim()} dimensions {tuple(t.shape)}, expected {len(spec.shape)}")
            for d, (want, got) in enumerate(zip(spec.shape, t.shape)):
                if isinstance(want, int):
                    if got != want:
                        raise LaunchError(f"{where} dimension {d} is {got}, expected {want}")
                elif sym.setdefault(want, int(got)) != got:
                    raise LaunchError(f"{where} dimension {d} is {got}, but {want} is {sym[want]} "
                                      "from an earlier tensor")
            if not t.is_contiguous():
                raise LaunchError(f"{where} is not contiguous (strides {t.stride()} for shape {tuple(t.shape)})")
        for name, v in sym.items():
            if v > INT32_MAX:
                raise LaunchError(f"{m.name}: {name} = {v} does not fit the kernel's int32 parameter")
        return sym

    def arguments(self, tensors: Sequence, sym: dict[str, int]) -> list[ctypes._SimpleCData]:
        """The ctypes values of the device function's parameters, in order."""
        out: list[ctypes._SimpleCData] = []
        for p in self.m.params:
            if p.kind == "ptr":
                out.append(ctypes.c_void_p(int(tensors[p.tensor].data_ptr())))
            else:
                out.append(ctypes.c_int32(self.m.evaluate(p.expr, sym)))
        return out

    def launch_config(self, sym: dict[str, int]) -> tuple[tuple[int, int, int], tuple[int, int, int], int]:
        grid = tuple(self.m.evaluate(e, sym) for e in self.m.grid)
        return grid, tuple(self.m.block), self.m.dynamic_shared    # type: ignore[return-value]

    def _function(self, ordinal: int) -> int:
        fn = self._fn.get(ordinal)
        if fn is None:
            drv = self.driver
            drv.ensure_context(ordinal)
            _, fn = drv.load(self.image, self.m.entry)
            if self.m.dynamic_shared > DEFAULT_DYNAMIC_SHARED:
                drv.set_max_dynamic_shared(fn, self.m.dynamic_shared)
            self._fn[ordinal] = fn
        return fn

    def __call__(self, *tensors) -> None:
        sym = self.bind(tensors)
        grid, block, shared = self.launch_config(sym)
        if any(g <= 0 for g in grid):
            return                                  # an empty grid: nothing to launch (TVM skips it too)
        device = tensors[0].device
        ordinal = device.index if device.index is not None else 0
        fn = self._function(ordinal)
        values = self.arguments(tensors, sym)
        self.driver.launch(fn, grid, block, shared, self._stream(device), values)
