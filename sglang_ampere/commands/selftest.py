"""``sglang-ampere selftest``: run every GPU kernel check on this machine's card.

The checks come from the kernel and quantization packages, each a ``gpu_checks()`` function
returning ``[(name, callable)]``; a callable returns a one-line detail on success and raises on
failure (e.g. an error bound exceeded against the torch reference on real DeepSeek-V4 shapes).
They are imported lazily, so a missing or broken provider is reported as a failure, not a crash.

Exit status: 0 all passed; 1 a check failed (or a provider is missing);
:data:`EXIT_NO_GPU` (3) no CUDA device, nothing was run.
"""

from __future__ import annotations

import argparse
import importlib
import time
import traceback
from dataclasses import dataclass

#: Exit code when no CUDA GPU is present (distinct from a failing check).
EXIT_NO_GPU = 3

#: Modules exposing ``gpu_checks() -> list[tuple[str, Callable[[], str]]]``.
PROVIDERS = ("sglang_ampere.kernels.selfchecks", "sglang_ampere.quant.selfchecks",
             "sglang_ampere.quant.native_selfchecks", "sglang_ampere.kernels.dsv4_ops_selfchecks")


@dataclass
class Result:
    name: str
    passed: bool
    detail: str
    seconds: float


def collect_checks(providers=PROVIDERS) -> tuple[list[tuple[str, object]], list[Result]]:
    """(checks to run, failures of providers that could not be loaded)."""
    checks, failures = [], []
    for mod_name in providers:
        try:
            found = list(importlib.import_module(mod_name).gpu_checks())
        except Exception as exc:  # a missing provider is a failure to report, not a crash
            failures.append(Result(mod_name, False, f"cannot load checks: {type(exc).__name__}: {exc}", 0.0))
            continue
        checks += [(f"{name}", fn) for name, fn in found]
    return checks, failures


def run_checks(checks) -> list[Result]:
    import torch

    results = []
    for name, fn in checks:
        start = time.monotonic()
        try:
            detail = fn()
            if torch.cuda.is_available():
                torch.cuda.synchronize()  # surface asynchronous kernel faults in this check
            results.append(Result(name, True, str(detail or ""), time.monotonic() - start))
        except Exception as exc:
            last = traceback.extract_tb(exc.__traceback__)[-1:]
            where = f" ({last[0].filename.rsplit('/', 1)[-1]}:{last[0].lineno})" if last else ""
            results.append(Result(name, False, f"{type(exc).__name__}: {exc}{where}", time.monotonic() - start))
    return results


def render(results: list[Result], device: str) -> str:
    width = max([len(r.name) for r in results] + [5])
    lines = [f"sglang-ampere selftest on {device}", f"{'check':{width}}  result  time     detail"]
    for r in results:
        lines.append(f"{r.name:{width}}  {'PASS' if r.passed else 'FAIL':6}  {r.seconds:6.2f}s  {r.detail}")
    failed = sum(not r.passed for r in results)
    lines.append(f"{len(results) - failed} passed, {failed} failed")
    return "\n".join(lines)


def cuda_device() -> str | None:
    """Name and arch of GPU 0, or None without a usable CUDA device."""
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    major, minor = torch.cuda.get_device_capability(0)
    return f"{torch.cuda.get_device_name(0)} (sm{major}{minor})"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-k", dest="match", metavar="TEXT", help="run only checks whose name contains TEXT")


def run_selftest(device: str | None, providers=PROVIDERS, match: str | None = None, out=None) -> int:
    """Print the table; return 0 / 1 / :data:`EXIT_NO_GPU` (see module docstring)."""
    import sys

    out = out or sys.stdout
    if device is None:
        print("sglang-ampere selftest: no CUDA GPU available (torch.cuda.is_available() is False), so no "
              f"kernel was checked. Run it on the serving machine. (exit code {EXIT_NO_GPU})", file=out)
        return EXIT_NO_GPU
    checks, failures = collect_checks(providers)
    if match:
        checks = [(n, f) for n, f in checks if match in n]
    results = failures + run_checks(checks)
    if not results:
        print("sglang-ampere selftest: no checks found", file=out)
        return 1
    print(render(results, device), file=out)
    return 0 if all(r.passed for r in results) else 1


def run(args: argparse.Namespace) -> int:
    return run_selftest(cuda_device(), match=getattr(args, "match", None))
