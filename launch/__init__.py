"""The launcher: argv (SGLang's own parser and --config merge), preset resolution, model and
topology checks, dry-run rendering, then exec of SGLang (see :mod:`.launcher` for the pieces).

``sglang-ampere launch`` and ``python -m sglang_ampere.launch`` both end in
:func:`sglang_ampere.launch.launcher.main`. Importing this package is cheap (no torch, no SGLang:
SGLang's parser is imported only when a launch parses its server arguments).
"""

from __future__ import annotations

from .launcher import LaunchError, LaunchSpec, build_spec, dry_run_command, format_spec, main

__all__ = ["LaunchError", "LaunchSpec", "OWN_ARGV", "build_spec", "dry_run_command", "format_spec", "main"]

#: ``sglang-ampere launch ...`` hands its whole argument list to :func:`main`, which parses the
#: launcher's options (and prints ``--help``) and forwards everything else to SGLang.
OWN_ARGV = True
