"""SGLang's real DeepSeek-V4 kernels vs the torch stand-ins of kernels/dsv4_ops_torch on a real
GPU (skipped without CUDA sm_80+ or without SGLang): the checks of kernels/dsv4_ops_selfchecks."""

from __future__ import annotations

import pytest
from helpers.gpu import GPU_MARKS

from sglang_ampere.kernels.dsv4_ops_selfchecks import gpu_checks

pytestmark = GPU_MARKS

CHECKS = gpu_checks()


@pytest.mark.parametrize("name,check", CHECKS, ids=[n for n, _ in CHECKS])
def test_stand_in_matches_sglang_kernel(name, check):
    pytest.importorskip("sglang")
    detail = check()
    print(f"{name}: {detail}")
