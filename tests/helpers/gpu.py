"""The marks every ``tests/gpu/`` module carries: ``gpu``, and skipped without a CUDA GPU of sm_80+."""

from __future__ import annotations

import pytest
import torch


def has_ampere_or_newer() -> bool:
    return torch.cuda.is_available() and torch.cuda.get_device_capability()[0] >= 8


GPU_MARKS = [
    pytest.mark.gpu,
    pytest.mark.skipif(not has_ampere_or_newer(), reason="needs a CUDA GPU of sm_80 or newer"),
]
