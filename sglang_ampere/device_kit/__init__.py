"""``sglang-ampere device-kit``: every GPU kernel of the project, checked on a bare GPU machine.

A borrowed GPU machine may have only Python + torch (no SGLang, no TileLang, no network, a 64 MiB
upload). This package builds, here, a folder that such a machine runs with one command
(``docs/device-kit.md``):

* :mod:`.export`   -- TileLang kernels -> CUDA source, cubin (sm_86 source as sm_90 SASS) and a
  launch manifest read out of TileLang's own host code (needs TileLang);
* :mod:`.manifest` -- the manifest format and its check against the cubin's parameter records;
* :mod:`.marlin`   -- SGLang's Marlin modules restricted to our specialisations, built with SGLang's
  own JIT build code, and SGLang's Python wrappers vendored (needs SGLang);
* :mod:`.builder`  -- the folder: kernels, modules, the tvm-ffi wheel, ``kit.json``;
* :mod:`.runtime`  -- launching a cubin from its manifest through the CUDA driver (ctypes);
* :mod:`.shim`     -- what the vendored wrappers import from SGLang, served from the kit;
* :mod:`.standins` -- torch stand-ins for the Marlin modules (the runner's CPU dry run);
* :mod:`.runner`      -- the runner (``python -m sglang_ampere.device_kit.runner``): checks, timings, JSON.

The runtime, shim, stand-ins and runner import with only torch and numpy installed; importing
this package imports nothing.
"""

from __future__ import annotations

import argparse
from pathlib import Path

DEFAULT_OUT = "device-kit"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default=DEFAULT_OUT, help=f"kit folder (default: ./{DEFAULT_OUT}, ignored by git); "
                        "replaced if it holds a kit")
    parser.add_argument("--arch", default="sm_90", help="the GPU machine's arch for the SASS (default: sm_90)")
    parser.add_argument("--source-arch", default="sm_86", help="tile plans and source (default: sm_86, a 3090)")
    parser.add_argument("--own-arch", action="store_true", help="also the kernels lowered for --arch itself")
    parser.add_argument("--only", default=None,
                        help="only TileLang kernels whose name contains one of these (comma-separated)")
    parser.add_argument("--marlin-module", action="append", default=None,
                        help="only these Marlin modules (repeat: gptq_marlin, moe_gemm1, moe_gemm2, repack, moe_align)")
    parser.add_argument("--no-tilelang", action="store_true", help="skip the TileLang kernels")
    parser.add_argument("--no-marlin", action="store_true", help="skip the Marlin modules")
    parser.add_argument("--no-wheel", action="store_true", help="do not add the tvm-ffi wheel")
    parser.add_argument("--tvm-ffi-wheel", type=Path, default=None,
                        help="the apache-tvm-ffi cp312 wheel to carry (default: cache, else pip download)")
    parser.add_argument("--lineinfo", action="store_true", help="compile the cubins with -lineinfo (larger)")
    parser.add_argument("--max-mb", type=float, default=40.0, help="refuse a kit larger than this (default 40)")


def _arch(text: str) -> int:
    t = text.lower().removeprefix("sm_").removeprefix("sm")
    if not t.isdigit():
        raise SystemExit(f"device-kit: an arch looks like sm_90, got {text!r}")
    return int(t)


def run(args: argparse.Namespace) -> int:
    import sys

    try:
        import sglang  # noqa: F401
        import tilelang  # noqa: F401
    except ImportError as e:
        print(f"device-kit needs the serve install (SGLang 0.5.23, TileLang 0.1.12): {e}", file=sys.stderr)
        return 2
    from .builder import KitBuildError, build_kit

    try:
        build_kit(Path(args.out), arch=_arch(args.arch), source_arch=_arch(args.source_arch), own_arch=args.own_arch,
                  tilelang=not args.no_tilelang, marlin=not args.no_marlin, only=args.only,
                  marlin_modules=args.marlin_module, tvm_ffi_wheel_path=args.tvm_ffi_wheel, wheel=not args.no_wheel,
                  lineinfo=args.lineinfo, max_mb=args.max_mb)
    except (KitBuildError, FileNotFoundError) as e:
        print(f"device-kit: {e}", file=sys.stderr)
        return 1
    return 0
