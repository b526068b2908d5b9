"""Drive SGLang's real Triton wrappers on CPU tensors; compile every launched kernel for
``TARGET_CC`` (default 86), never launch. The fake driver of the dsv4_int census
(shared/reference/sm86-census-scripts/tharness.py), kept here so the native census runs from the repo."""
import os
import sys
import traceback

import torch
from triton.backends.compiler import GPUTarget
from triton.runtime import driver as _drv
from triton.runtime.jit import JITFunction

ARCH = int(os.environ.get("TARGET_CC", "86"))


class FakeDriver:
    def get_current_device(self):
        return 0

    def set_current_device(self, d):
        pass

    def get_current_stream(self, device=None):
        return 0

    def get_current_target(self):
        return GPUTarget("cuda", ARCH, 32)

    def get_active_torch_device(self):
        return torch.device("cpu")

    def get_device_interface(self):
        return torch.cuda

    def is_active(self):
        return True

    def map_python_to_cpp_type(self, ty):
        return ty

    def get_benchmarker(self):
        raise RuntimeError("no benchmarker on the fake driver")

    def get_empty_cache_for_benchmark(self):
        return torch.empty(1)

    def clear_cache(self, c):
        pass

    def __getattr__(self, k):
        raise AttributeError(f"FakeDriver has no {k}")


_drv.set_active(FakeDriver())

LAUNCHES = []   # (kernel name, status, message)
_orig_run = JITFunction.run


def _run(self, *args, grid, warmup, **kwargs):
    name = f"{self.fn.__module__}.{self.fn.__qualname__}"
    try:
        r = _orig_run(self, *args, grid=grid, warmup=True, **kwargs)
        LAUNCHES.append((name, "OK", ""))
        return r
    except Exception as e:
        LAUNCHES.append((name, "FAIL", str(e)))
        raise


JITFunction.run = _run


def attempt(label, fn):
    n0 = len(LAUNCHES)
    try:
        fn()
        status, err = "OK", ""
    except Exception as e:
        status, err = "EXC", "".join(traceback.format_exception_only(type(e), e)).strip()
    kernels = LAUNCHES[n0:]
    print(f"=== {label}: wrapper {status}")
    for k, s, m in kernels:
        print(f"    kernel {k}: {s}" + (f"\n      {m[:1200]}" if m else ""))
    if status != "OK" and not any(s == "FAIL" for _, s, _ in kernels):
        print("    wrapper error:", err[:1500])
    sys.stdout.flush()
    return kernels
