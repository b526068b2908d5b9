"""The GPU self-checks' own plumbing, run on CPU with small shapes (layers built by our
methods, SGLang's MoE runner and dispatch types, the method's apply): both sides are the
torch reference here, so this proves the check code runs, not the kernels."""

from __future__ import annotations

import pytest

pytest.importorskip("sglang")

from sglang_ampere.checking import CheckFailed
from sglang_ampere.quant import selfchecks as g


def test_checks_are_listed_for_selftest():
    names = [n for n, _ in g.gpu_checks()]
    assert len(names) == 4 and all(callable(fn) for _, fn in g.gpu_checks())
    assert any("Marlin uint4b8 g32" in n for n in names) and any("per-channel" in n for n in names)


@pytest.mark.parametrize("strategy", ["block", "channel"])
def test_int8_check_plumbing(strategy):
    detail = g.check_int8_linear(strategy, device="cpu", shapes=[("t", 256, 512)], tokens=(1, 5))
    assert "reference" in detail


@pytest.mark.parametrize("backend", ["marlin", "triton"])
def test_moe_check_plumbing(backend):
    detail = g.check_int4_moe(
        backend, device="cpu", shape=dict(experts=4, hidden=256, inter=128, topk=2), tokens=(1, 6)
    )
    assert "reference" in detail and "clamp changes the output" in detail


def test_checks_refuse_without_cuda_when_asked_for_cuda():
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(CheckFailed, match="no CUDA device"):
        g.check_int8_linear("block")
