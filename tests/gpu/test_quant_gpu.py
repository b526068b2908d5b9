"""GPU: SGLang's Marlin W8A16 linear / W4A16 MoE (and the opt-in Triton WNA16 MoE) for dsv4_int,
and the native checkpoint's FP8 Marlin W8A16 linear and MXFP4 Marlin MoE through the gate-lifted
method (``patches/dsv4_native``), vs the torch references on real DeepSeek-V4-Flash shapes -- the
same checks `sglang-ampere selftest` runs. Skipped cleanly without a CUDA sm_80+ device."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("sglang")

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.get_device_capability() < (8, 0),
                       reason="needs a CUDA sm_80+ GPU"),
]

from sglang_ampere.quant import gpu_checks, native_checks  # noqa: E402

CHECKS = gpu_checks.gpu_checks() + native_checks.gpu_checks()


@pytest.mark.parametrize("name,check", CHECKS, ids=[n for n, _ in CHECKS])
def test_quant_kernel_matches_reference(name, check):
    detail = check()
    print(f"{name}: {detail}")
    assert detail
