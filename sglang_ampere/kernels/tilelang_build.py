"""What every sglang-ampere TileLang kernel shares: target, pass configs, tile-plan choice, device query.

* :data:`AMPERE_PASS_CONFIGS` - TMA, warp specialisation, WGMMA (Hopper) and 256-bit loads
  (sm_100+) off: on an sm_90+ card under ``SGLANG_AMPERE_TARGET=ampere`` a kernel then keeps the
  sm_80/sm_86 instruction path (``mma.sync`` HMMA, ``cp.async``/plain loads); below sm_90 none of
  them exists anyway. A kernel module may add its own switches on top.
* :func:`target_for` - kernels are always built for the card's own arch, from the same source.
* :func:`plan_for_arch` - sm_80..sm_89 have a plan per module; any newer card that takes the
  Ampere path (:func:`sglang_ampere.gpus.takes_ampere_path`) runs the sm_86 plan, whose shared
  memory fits every newer arch's per-block limit.
* :func:`device_arch` - ``(sm number, SM count)`` of a CUDA device, cached.

Importing this module imports neither TileLang nor SGLang.
"""

from __future__ import annotations

import functools
from typing import Mapping, TypeVar

import torch

AMPERE_PASS_CONFIGS: dict[str, bool] = {
    "tl.disable_tma_lower": True,
    "tl.disable_warp_specialized": True,
    "tl.disable_wgmma": True,
    "tl.disable_vectorize_256": True,
}

P = TypeVar("P")


def target_for(arch: int) -> dict:
    return {"kind": "cuda", "arch": f"sm_{arch}"}


def compile_prim(prim_func, arch: int, pass_configs: Mapping[str, bool]):
    """JIT-compile a TileLang ``prim_func`` for ``sm_{arch}`` (TileLang caches the binary on disk)."""
    import tilelang

    return tilelang.compile(prim_func, target=target_for(arch), execution_backend="tvm_ffi",
                            pass_configs=dict(pass_configs))


def plan_for_arch(plans: Mapping[int, P], arch: int, what: str) -> P:
    """The tile plan of ``sm_{arch}`` from a module's ``plans`` (keyed by sm number, with 86)."""
    from sglang_ampere import gpus

    if arch in plans:
        return plans[arch]
    if 80 <= arch < 90:
        return plans[86]          # sm_87/sm_89: the same 99-100 KB shared-memory limit as sm_86
    if arch >= 90 and gpus.takes_ampere_path(divmod(arch, 10)):
        return plans[86]
    raise ValueError(f"no TileLang {what} tile plan for sm_{arch}; these kernels are for sm_80..sm_89 "
                     "(on a newer card, SGLANG_AMPERE_TARGET=ampere runs them as the Ampere path)")


@functools.lru_cache(maxsize=None)
def _device_arch(index: int) -> tuple[int, int]:
    major, minor = torch.cuda.get_device_capability(index)
    return major * 10 + minor, torch.cuda.get_device_properties(index).multi_processor_count


def device_arch(device: torch.device | int | None = None) -> tuple[int, int]:
    """``(major * 10 + minor, multiprocessor count)`` of a CUDA device (default: the current one)."""
    if isinstance(device, torch.device):
        device = device.index
    return _device_arch(torch.cuda.current_device() if device is None else int(device))
