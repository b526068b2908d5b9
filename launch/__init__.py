"""The launcher: preset resolution, flag translation, topology checks, then exec of SGLang.

``sglang-ampere launch`` and ``python -m sglang_ampere.launch`` both end in
:func:`sglang_ampere.launch.launcher.main`. Importing this package is cheap (no torch, no SGLang).
"""

from __future__ import annotations

import argparse

from .launcher import LaunchError, build_plan, dry_run_command, format_plan, main

__all__ = ["LaunchError", "add_arguments", "build_plan", "dry_run_command", "format_plan", "main", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Make the ``launch`` sub-command hand its whole argument list to :func:`run`.

    The console script parses with ``parse_args``, which would reject SGLang's own flags; the
    sub-parser therefore keeps every string (launcher options are parsed in :func:`main`, which
    also prints ``--help``).
    """
    def keep_everything(args=None, namespace=None):
        namespace = namespace if namespace is not None else argparse.Namespace()
        namespace.launch_argv = list(args or [])
        return namespace, []

    parser.parse_known_args = keep_everything  # type: ignore[method-assign]


def run(args: argparse.Namespace) -> int:
    return main(args.launch_argv)
