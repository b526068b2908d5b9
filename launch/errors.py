"""The launcher's one user-facing error type (every module of ``launch/`` raises it)."""

from __future__ import annotations


class LaunchError(Exception):
    """A problem the user must fix; the message says how. Exit code 2."""
