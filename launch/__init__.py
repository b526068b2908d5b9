"""The launcher: argv (SGLang's own parser and --config merge), preset resolution, model and
topology checks, dry-run rendering, then exec of SGLang (see :mod:`.launcher` for the pieces).

``sglang-ampere launch`` and ``python -m sglang_ampere.launch`` both end in
:func:`sglang_ampere.launch.launcher.main`. Importing this package is cheap (no torch, no SGLang:
SGLang's parser is imported only when a launch parses its server arguments).
"""

from __future__ import annotations

from .launcher import LaunchError, LaunchSpec, build_spec, dry_run_command, format_spec, main

__all__ = ["LaunchError", "LaunchSpec", "build_spec", "dry_run_command", "format_spec", "main"]
