"""Pass/fail checks that survive ``python -O``: one exception and the error metrics they use.

Every check that decides a verdict (the GPU self-checks behind ``sglang-ampere selftest`` and
``tests/gpu/``, and anything else that must fail loudly) raises :class:`CheckFailed` through
:func:`require`, never ``assert``, which ``python -O`` / ``PYTHONOPTIMIZE`` strip out. The error
metrics are named functions so that a check says which one it used.
"""

from __future__ import annotations

import torch


class CheckFailed(Exception):
    """A check measured a wrong result (or could not run on this machine)."""


def require(ok: bool, message: str) -> None:
    """Raise :class:`CheckFailed` with ``message`` unless ``ok``."""
    if not ok:
        raise CheckFailed(message)


def require_cuda_sm80(what: str) -> "torch.device":
    """The CUDA device for a GPU check, or :class:`CheckFailed` saying why there is none.

    ``what`` names the checks in the message (e.g. "the TileLang sparse-MLA checks").
    """
    if not torch.cuda.is_available():
        raise CheckFailed(f"no CUDA device: {what} need an sm_80+ GPU")
    major, minor = torch.cuda.get_device_capability()
    if major < 8:
        raise CheckFailed(f"sm_{major}{minor} is below sm_80; {what} need Ampere or newer")
    return torch.device("cuda")


def rel_frobenius(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """``||actual - expected||_F / ||expected||_F`` in float64 (0 when both are zero)."""
    a, e = actual.double(), expected.double()
    den = float(e.norm())
    num = float((a - e).norm())
    if den == 0.0:
        return 0.0 if num == 0.0 else float("inf")
    return num / den


def worst_slice_max_rel(actual: torch.Tensor, expected: torch.Tensor, dim: int) -> float:
    """The worst slice along ``dim`` of ``max|actual - expected| / max|expected|``.

    Used where slices have very different magnitudes (e.g. attention heads whose sink dominates
    have small outputs), so one global norm would hide a wrong small slice.
    """
    err = (actual.double() - expected.double()).abs().transpose(0, dim).flatten(1).amax(1)
    ref = expected.double().abs().transpose(0, dim).flatten(1).amax(1).clamp(min=1e-30)
    return float((err / ref).max())


def require_close(name: str, metric: str, value: float, tol: float) -> str:
    """Raise unless ``value <= tol`` (NaN fails); return the one-line detail a check reports."""
    detail = f"{metric} {value:.2e} (tolerance {tol:.0e})"
    require(value == value and value <= tol, f"{name}: {detail}")
    return detail
