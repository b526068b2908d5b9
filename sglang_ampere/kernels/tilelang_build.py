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
* :func:`kernel_params` / :func:`launch_args` / :func:`check_launch` - the parameter names of a
  kernel as TileLang generates it, the arguments TileLang's CUDA host launcher (cython and NVRTC
  backends) passes it, and the check that the names are distinct and the two lists agree
  (TileLang's launchers collect dynamic sizes by name, so two sizes sharing one name would get one
  argument).

Importing this module imports neither TileLang nor SGLang.
"""

from __future__ import annotations

import functools
import re
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


def lower_cuda(prim_func, arch: int, pass_configs: Mapping[str, bool]):
    """``tilelang.lower`` for ``sm_{arch}`` as kernel-report does (no GPU needed): the artifact with
    the host and device modules and the CUDA source."""
    import tilelang
    from tilelang import tvm

    tgt = tvm.target.Target(target_for(arch))
    with tvm.transform.PassContext(opt_level=3, config=dict(pass_configs)), tgt:
        return tilelang.lower(prim_func, target=tgt)


def kernel_params(prim_func, arch: int, pass_configs: Mapping[str, bool], artifact=None) -> dict[str, list[str]]:
    """Each generated device kernel's parameter names, in order, with ``prim_func`` lowered for
    ``sm_{arch}`` (or taken from ``artifact``, a :func:`lower_cuda` result)."""
    art = artifact if artifact is not None else lower_cuda(prim_func, arch, pass_configs)
    return {gv.name_hint: [str(p.name) for p in fn.params] for gv, fn in art.device_mod.functions.items()}


_LAUNCH = (re.compile(r"cudaLaunchKernelEx\(&config,\s*(\w+),\s*([^;]*)\);"),
           re.compile(r"\b(\w+)<<<[^;]*?>>>\(([^;]*)\);"))


def launch_args(prim_func, arch: int, pass_configs: Mapping[str, bool], artifact=None) -> dict[str, list[str]]:
    """The arguments each kernel is launched with by TileLang's generated CUDA host launcher (the
    C++ its cython and NVRTC backends compile; generated here without a GPU or compiler).

    Raises ``ValueError`` when TileLang's generator refuses the kernel (it asserts one argument
    per kernel parameter) or when no launch is found in what it generates.
    """
    from tilelang import tvm
    from tilelang.jit.adapter.wrapper import TLWrapper

    art = artifact if artifact is not None else lower_cuda(prim_func, arch, pass_configs)
    wrapper = TLWrapper(tvm.target.Target(target_for(arch)))
    wrapper.assign_optimized_module(tvm.IRModule({prim_func.attrs["global_symbol"]: prim_func}))
    wrapper.assign_pass_configs(dict(pass_configs))
    wrapper.assign_host_module(art.host_mod)
    wrapper.assign_device_module(art.device_mod)
    try:
        code = wrapper.wrap(art.kernel_source)
    except AssertionError as e:          # TileLang checks the launch with assert
        raise ValueError(f"TileLang's CUDA launcher generator refused {prim_func.attrs['global_symbol']}: {e}") from e
    found = {name: [a.strip() for a in args.split(",")] for pattern in _LAUNCH for name, args in pattern.findall(code)}
    if not found:
        raise ValueError(f"no kernel launch found in TileLang's host launcher for {prim_func.attrs['global_symbol']}")
    return found


def check_launch(prim_func, arch: int, pass_configs: Mapping[str, bool]) -> dict[str, list[str]]:
    """Lower ``prim_func`` for ``sm_{arch}`` once and check that every device kernel has distinct
    parameter names and that TileLang's generated launcher passes it exactly its parameters, by
    name and in order; returns the parameter names. Raises ``ValueError`` otherwise."""
    art = lower_cuda(prim_func, arch, pass_configs)
    params = kernel_params(prim_func, arch, pass_configs, artifact=art)
    for name, names in params.items():
        check_unique_params(name, names)
    launches = launch_args(prim_func, arch, pass_configs, artifact=art)
    for name, names in params.items():
        if launches.get(name) != names:
            raise ValueError(f"{name}: TileLang's launcher passes {launches.get(name)}, the kernel takes {names}")
    return params


def dynamic_size_names(prim_func) -> list[str]:
    """The names of the distinct dynamic sizes in ``prim_func``'s buffer shapes, one per size, in
    the order TileLang's launch generators collect them (a name twice: two sizes share it)."""
    from tilelang import tvm

    sizes: list = []
    for param in prim_func.params:
        buf = prim_func.buffer_map.get(param)
        for dim in [] if buf is None else buf.shape:
            if isinstance(dim, tvm.tirx.Var) and not any(dim.same_as(v) for v in sizes):
                sizes.append(dim)
    return [str(v.name) for v in sizes]


def duplicates(names) -> list[str]:
    """The names that occur more than once in ``names`` (sorted)."""
    seen: set[str] = set()
    dup: set[str] = set()
    for n in names:
        (dup if n in seen else seen).add(n)
    return sorted(dup)


def check_unique_params(kernel: str, names) -> None:
    """Raise ``ValueError`` when two of a kernel's parameters (or dynamic sizes) share a name."""
    dup = duplicates(names)
    if dup:
        raise ValueError(f"{kernel}: parameter name(s) {dup} occur more than once in {list(names)}; TileLang's "
                         "NVRTC and cython launchers would pass one argument for each such name")


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
