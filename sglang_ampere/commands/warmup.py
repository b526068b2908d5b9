"""``sglang-ampere warmup``: build SGLang's JIT kernels for our serving paths ahead of time.

What is built, where, and why: :mod:`sglang_ampere.jit_cache`. ``--checkpoint`` (a format name or
a checkpoint folder) builds only what that format runs; without it, both formats' kernels are built.
``--speculative`` likewise: only what a server with that choice runs (``none`` leaves out MTP's
draft-tree and verify-sampling modules); without it, every choice's.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

from .. import envvars
from ..cuda_tools import find_cuda_home
from ..gpus import AUTO, KNOWN_ARCHES, Arch, add_gpu_flag
from ..jit_cache import CHECKPOINTS, TARGETS, build, cache_root, is_built, targets_for
from ..speculative import CHOICES as SPECULATIVE


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_gpu_flag(parser, AUTO, "auto (read nvidia-smi) or one of " + ", ".join(KNOWN_ARCHES)
                 + "; no GPU is needed with an explicit arch", auto=True)
    parser.add_argument("--only", action="append", choices=[t.key for t in TARGETS], metavar="KERNEL",
                        help="build only this kernel (repeatable): " + ", ".join(t.key for t in TARGETS))
    parser.add_argument("--cache-dir", metavar="DIR",
                        help=f"JIT cache to fill (default: ${envvars.SGLANG_JIT_CACHE_DIR} or ~/.cache/sglang/jit); "
                        f"launch with the same {envvars.SGLANG_JIT_CACHE_DIR} to use it")
    parser.add_argument("--checkpoint", metavar="FORMAT|DIR",
                        help="build only what this checkpoint runs: " + " or ".join(CHECKPOINTS)
                        + ", or a checkpoint folder (its config.json decides); default: both formats")
    parser.add_argument("--speculative", choices=SPECULATIVE, default=None,
                        help="build only what a server with launch's --speculative CHOICE runs (none: without "
                        "MTP's draft-tree and verify-sampling modules); default: every choice's")
    parser.add_argument("--list", action="store_true", help="show the kernels and whether each is built")


def resolve_checkpoint(value: str | None) -> str | None:
    """``--checkpoint``: a format name, or a checkpoint folder whose format is detected."""
    if value is None or value in CHECKPOINTS:
        return value
    from ..checkpoint_format import CheckpointFormatError, detect

    if not Path(value).expanduser().is_dir():
        raise SystemExit(f"sglang-ampere warmup: error: --checkpoint {value!r} is neither a format "
                         f"({', '.join(CHECKPOINTS)}) nor a checkpoint folder")
    try:
        kind = detect(Path(value).expanduser()).kind
    except CheckpointFormatError as exc:
        raise SystemExit(f"sglang-ampere warmup: error: {exc}") from None
    if kind not in CHECKPOINTS:
        raise SystemExit(f"sglang-ampere warmup: error: {value} is not a DeepSeek-V4-Flash checkpoint this "
                         f"package serves (quant_method must be fp8 or dsv4_int); pass --checkpoint "
                         f"{' or '.join(CHECKPOINTS)}")
    return kind


def resolve_arch(gpu: str) -> Arch:
    """``--gpu``: an arch with JIT targets, or (``auto``) the one arch of the visible GPUs."""
    if gpu != AUTO:
        arch = Arch(gpu)
        if arch not in KNOWN_ARCHES:
            raise SystemExit(f"sglang-ampere warmup: error: unknown --gpu {gpu!r}; known: {', '.join(KNOWN_ARCHES)}")
        return arch
    from .. import gpus as gpus_mod

    try:
        found = gpus_mod.detect_gpus(os.environ)
    except gpus_mod.GpuDetectionError as exc:
        raise SystemExit(f"sglang-ampere warmup: error: no GPU detected ({exc}); "
                         "pass --gpu sm86 (or sm80/sm89/sm90/sm120) to build without one") from None
    arches = sorted({g.arch for g in found})
    if len(arches) != 1 or arches[0] not in KNOWN_ARCHES:
        raise SystemExit(f"sglang-ampere warmup: error: detected {arches or 'no GPU'}; pass --gpu ARCH")
    return arches[0]


def run(args: argparse.Namespace) -> int:
    arch = resolve_arch(args.gpu)
    if args.cache_dir:
        os.environ[envvars.SGLANG_JIT_CACHE_DIR] = str(Path(args.cache_dir).expanduser().resolve())
    checkpoint = resolve_checkpoint(getattr(args, "checkpoint", None))
    needed = targets_for(arch, checkpoint, getattr(args, "speculative", None))
    chosen = [t for t in needed if not args.only or t.key in args.only]
    if args.list:
        for t in needed:
            state = "built" if is_built(t, arch, os.environ) else "cold"
            when = "+".join(t.checkpoints) + (f", --speculative {'/'.join(t.speculative)}" if t.speculative else "")
            print(f"{t.key:20s} {state:6s} ~{t.est_minutes:g} min  {when:34s} {t.why}")
        return 0
    if not chosen:
        print(f"sglang-ampere warmup: nothing to build for {arch} with --only {args.only}")
        return 0
    cuda_home = find_cuda_home(os.environ)
    if cuda_home is None or shutil.which("nvcc") is None:
        print("sglang-ampere warmup: error: nvcc not found. Install the CUDA toolkit (12.x/13.x) and put "
              "its bin/ on PATH, or set CUDA_HOME to the toolkit root", file=sys.stderr)
        return 1
    os.environ["CUDA_HOME"] = cuda_home
    total = sum(t.est_minutes for t in chosen)
    print(f"Building {len(chosen)} JIT kernel module(s) for {arch} into {cache_root(os.environ)} "
          f"(about {total:g} min on a 2-core host; fewer on a workstation)")
    results = build(arch, chosen)
    failed = 0
    for t, status, secs in results:
        print(f"  {'PASS' if status == 'ok' else 'FAIL'}  {t.key:20s} {secs:7.1f} s  "
              f"{'' if status == 'ok' else status}")
        failed += status != "ok"
    if failed:
        print(f"{failed} module(s) failed to build. Fix: check nvcc/g++ versions and CUDA_HOME ({cuda_home}); "
              f"rerun with {envvars.SGLANG_JIT_FORCE_RECOMPILE}=1 to retry from scratch", file=sys.stderr)
        return 1
    print(f"JIT cache ready for {arch}. Launch with the same {envvars.SGLANG_JIT_CACHE_DIR} "
          f"({cache_root(os.environ)}) to skip compilation.")
    return 0
