"""The launcher: preset resolution, flag translation, topology checks, then exec of SGLang.

``sglang-ampere launch`` and ``python -m sglang_ampere.launch`` both end in
:func:`sglang_ampere.launch.launcher.main`. Importing this package is cheap (no torch, no SGLang).
"""

from __future__ import annotations

from .launcher import LaunchError, build_plan, dry_run_command, format_plan, main

__all__ = ["LaunchError", "OWN_ARGV", "build_plan", "dry_run_command", "format_plan", "main"]

#: ``sglang-ampere launch ...`` hands its whole argument list to :func:`main`, which parses the
#: launcher's options (and prints ``--help``) and forwards everything else to SGLang.
OWN_ARGV = True
