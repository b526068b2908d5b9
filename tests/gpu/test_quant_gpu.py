"""GPU: SGLang's Marlin W8A16 linear / W4A16 MoE (and the opt-in Triton WNA16 MoE) for dsv4_int,
and the native checkpoint's FP8 Marlin W8A16 linear and MXFP4 Marlin MoE through the gate-lifted
method (``patches/dsv4_native``), vs the torch references on real DeepSeek-V4-Flash shapes -- the
same checks `sglang-ampere selftest` runs. Skipped cleanly without a CUDA sm_80+ device."""

from __future__ import annotations

import pytest
from helpers.gpu import GPU_MARKS

pytest.importorskip("sglang")

from sglang_ampere.quant import native_selfchecks, selfchecks  # noqa: E402

pytestmark = GPU_MARKS

CHECKS = selfchecks.gpu_checks() + native_selfchecks.gpu_checks()


@pytest.mark.parametrize("name,check", CHECKS, ids=[n for n, _ in CHECKS])
def test_quant_kernel_matches_reference(name, check):
    detail = check()
    print(f"{name}: {detail}")
    assert detail
