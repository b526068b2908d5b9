"""The one check of the installed SGLang against :data:`sglang_ampere.SGLANG_PIN`.

The plugin (which refuses to install itself on an error) and ``doctor`` (which reports it) both
ask :func:`pin_problem`, so ``SGLANG_AMPERE_ALLOW_ANY_SGLANG=1`` means the same to both: a
mismatch is then a warning instead of an error.
"""

from __future__ import annotations

from importlib import metadata
from typing import Mapping

from . import SGLANG_PIN, envvars
from .notes import Note, error, warning

#: Stands for "read the installed version" (``None`` means: not installed).
INSTALLED = object()


def installed_version() -> str | None:
    """The installed SGLang's version, or None when it is not installed."""
    try:
        return metadata.version("sglang")
    except metadata.PackageNotFoundError:
        return None


def install_command() -> str:
    """The fix for every problem :func:`pin_problem` reports."""
    return f"pip install 'sglang=={SGLANG_PIN}'"


def pin_problem(installed: str | None | object = INSTALLED, environ: Mapping[str, str] | None = None) -> Note | None:
    """None when ``installed`` (default: the installed version) is the pin; else an error
    (``sglang.missing``, ``sglang.unpinned``), or a warning (``sglang.unpinned-allowed``) for a
    mismatch under ``SGLANG_AMPERE_ALLOW_ANY_SGLANG=1``."""
    version = installed_version() if installed is INSTALLED else installed
    if version is None:
        return error("sglang.missing", "SGLang is not installed")
    if version == SGLANG_PIN:
        return None
    text = f"sglang-ampere is written for SGLang {SGLANG_PIN}, but SGLang {version} is installed"
    if envvars.get(envvars.ALLOW_ANY_SGLANG, environ) == "1":
        return warning("sglang.unpinned-allowed",
                       f"{text}; {envvars.ALLOW_ANY_SGLANG}=1 lets it start anyway (unsupported: the patches "
                       "may miss their targets)")
    return error("sglang.unpinned", text)
