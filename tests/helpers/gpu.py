"""The marks every ``tests/gpu/`` module carries (``gpu``, and skipped without a CUDA GPU of sm_80+),
and the test that runs a check provider's checks."""

from __future__ import annotations

import pytest
import torch


def has_ampere_or_newer() -> bool:
    return torch.cuda.is_available() and torch.cuda.get_device_capability()[0] >= 8


GPU_MARKS = [
    pytest.mark.gpu,
    pytest.mark.skipif(not has_ampere_or_newer(), reason="needs a CUDA GPU of sm_80 or newer"),
]


def checks_test(checks: list, needs: str):
    """A test with one case per ``(name, check)`` of a check provider (its id the name): the check
    passes when it returns (its detail is printed) and fails when it raises; skipped without the
    package ``needs``."""

    @pytest.mark.parametrize("name,check", checks, ids=[n for n, _ in checks])
    def test(name, check):
        pytest.importorskip(needs)
        detail = check()
        print(f"{name}: {detail}")

    return test
