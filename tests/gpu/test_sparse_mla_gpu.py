"""TileLang sparse-MLA kernels vs the torch fallback on a real GPU (skipped without CUDA sm_80+)."""

from __future__ import annotations

import pytest
from helpers.gpu import GPU_MARKS

from sglang_ampere.kernels.selfchecks import gpu_checks

pytestmark = GPU_MARKS

CHECKS = gpu_checks()


@pytest.mark.parametrize("name,check", CHECKS, ids=[n for n, _ in CHECKS])
def test_tilelang_matches_torch(name, check):
    pytest.importorskip("tilelang")
    detail = check()
    print(f"{name}: {detail}")
