"""The native GPU self-checks' plumbing and pass/fail logic, on CPU with small shapes.

The layers are SGLang's (``ReplicatedLinear`` under the native ``Fp8Config``; the gate-lifted MXFP4
Marlin method with SGLang's runner and dispatch types); without CUDA the methods take their torch
paths, so a pass proves the check code runs, not the kernels. Each check is then fed deliberately
wrong kernels (the mistakes a real kernel or repack could make) and must raise CheckFailed, which
also holds under ``python -O`` (the checks use ``require``, never ``assert``)."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("sglang")

from helpers.sglang_cpu import init_sglang_cpu

from sglang_ampere.checking import CheckFailed

SMALL_DENSE = [("t", 256, 384), ("odd", 200, 300)]
SMALL_MOE = dict(experts=4, hidden=256, inter=128, topk=2)


@pytest.fixture(scope="module")
def nc():
    init_sglang_cpu()
    from sglang_ampere.quant import native_selfchecks

    return native_selfchecks


def test_listed_for_selftest(nc):
    from sglang_ampere.commands import selftest

    assert "sglang_ampere.quant.native_selfchecks" in selftest.PROVIDERS
    checks, failures = selftest.collect_checks(("sglang_ampere.quant.native_selfchecks",))
    assert failures == [] and len(checks) == 2 and all(callable(fn) for _, fn in checks)
    names = " | ".join(n for n, _ in checks)
    assert "FP8 Marlin" in names and "MXFP4" in names


def test_fp8_linear_check_plumbing(nc, seed):
    detail = nc.check_fp8_marlin_linear(device="cpu", shapes=SMALL_DENSE, tokens=(1, 5), seed=seed)
    assert "reference" in detail and "2 shapes" in detail


def _scale_grid_flipped(method, layer, x):
    from sglang_ampere.quant.native_linear import reference_fp8_linear

    return reference_fp8_linear(x, layer.weight, layer.weight_scale_inv.flip(0))


def _one_scale_per_tensor(method, layer, x):
    from sglang_ampere.quant.native_linear import reference_fp8_linear

    s = layer.weight_scale_inv
    return reference_fp8_linear(x, layer.weight, s[:1, :1].expand_as(s).contiguous())


def _float32_output(method, layer, x):
    from sglang_ampere.quant.native_linear import reference_fp8_linear

    return reference_fp8_linear(x.float(), layer.weight, layer.weight_scale_inv)


@pytest.mark.parametrize("wrong", [_scale_grid_flipped, _one_scale_per_tensor, _float32_output],
                         ids=["scale-rows-flipped", "one-scale", "float32-out"])
def test_fp8_linear_check_fails_on_a_wrong_kernel(nc, seed, wrong):
    with pytest.raises(CheckFailed):
        nc.check_fp8_marlin_linear(device="cpu", shapes=SMALL_DENSE, tokens=(3,), seed=seed, apply=wrong)


def test_moe_check_plumbing(nc, seed):
    detail = nc.check_mxfp4_marlin_moe(device="cpu", shape=SMALL_MOE, tokens=(1, 6), seed=seed)
    assert "(reference)" in detail and "clamp changes the output" in detail


def _scaled_twice(method, layer, dispatch):
    out = method.apply(layer, dispatch)
    return out._replace(hidden_states=out.hidden_states * 1.5) if hasattr(out, "_replace") else \
        type(out)(hidden_states=out.hidden_states * 1.5)


def _no_clamp(method, layer, dispatch):
    from sglang.srt.layers.moe.token_dispatcher.standard import StandardCombineInput

    from sglang_ampere.quant.native_moe import reference_mxfp4_moe

    t = dispatch.topk_output
    return StandardCombineInput(hidden_states=reference_mxfp4_moe(
        dispatch.hidden_states, layer.w13_weight, layer.w13_weight_scale_inv, layer.w2_weight,
        layer.w2_weight_scale_inv, t.topk_weights, t.topk_ids, None, None))


def _gate_up_swapped(method, layer, dispatch):
    from sglang.srt.layers.moe.token_dispatcher.standard import StandardCombineInput

    from sglang_ampere.quant.native_moe import reference_mxfp4_moe

    def swap(w):
        half = w.shape[1] // 2
        return torch.cat((w[:, half:], w[:, :half]), dim=1)

    t = dispatch.topk_output
    return StandardCombineInput(hidden_states=reference_mxfp4_moe(
        dispatch.hidden_states, swap(layer.w13_weight), swap(layer.w13_weight_scale_inv), layer.w2_weight,
        layer.w2_weight_scale_inv, t.topk_weights, t.topk_ids, method.runner.config.swiglu_limit, None))


@pytest.mark.parametrize("wrong", [_scaled_twice, _no_clamp, _gate_up_swapped],
                         ids=["routed-scaling-twice", "no-swiglu-clamp", "gate-up-swapped"])
def test_moe_check_fails_on_a_wrong_kernel(nc, seed, wrong):
    with pytest.raises(CheckFailed):
        nc.check_mxfp4_marlin_moe(device="cpu", shape=SMALL_MOE, tokens=(5,), seed=seed, apply=wrong)


def test_moe_check_refuses_inputs_that_do_not_reach_the_clamp(nc, monkeypatch):
    monkeypatch.setattr(nc, "_scale_byte", lambda k, **kw: 110)      # tiny weights: the clamp never acts
    with pytest.raises(CheckFailed, match="do not exercise the SwiGLU clamp"):
        nc.check_mxfp4_marlin_moe(device="cpu", shape=SMALL_MOE, tokens=(4,))


def test_checks_refuse_cuda_without_a_gpu(nc):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(CheckFailed, match="no CUDA device"):
        nc.check_mxfp4_marlin_moe()
    with pytest.raises(CheckFailed, match="no CUDA device"):
        nc.check_fp8_marlin_linear()
