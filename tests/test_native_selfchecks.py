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


def test_moe_check_plumbing(nc, seed):
    detail = nc.check_mxfp4_marlin_moe(device="cpu", shape=SMALL_MOE, tokens=(1, 6), seed=seed)
    assert "(reference)" in detail and "clamp changes the output" in detail


def _scaled_twice(method, layer, dispatch):
    out = method.apply(layer, dispatch)
    return out._replace(hidden_states=out.hidden_states * 1.5) if hasattr(out, "_replace") else \
        type(out)(hidden_states=out.hidden_states * 1.5)


def _reference_combine(layer, dispatch, swiglu_limit, gate_up=lambda w: w):
    """The float reference MoE on ``dispatch`` as SGLang's combine input; ``gate_up`` maps the
    w13 weight and its scales."""
    from sglang.srt.layers.moe.token_dispatcher.standard import StandardCombineInput

    from sglang_ampere.quant.native_moe import reference_mxfp4_moe

    t = dispatch.topk_output
    return StandardCombineInput(hidden_states=reference_mxfp4_moe(
        dispatch.hidden_states, gate_up(layer.w13_weight), gate_up(layer.w13_weight_scale_inv), layer.w2_weight,
        layer.w2_weight_scale_inv, t.topk_weights, t.topk_ids, swiglu_limit, None))


def _no_clamp(method, layer, dispatch):
    return _reference_combine(layer, dispatch, None)


def _gate_up_swapped(method, layer, dispatch):
    def swap(w):
        half = w.shape[1] // 2
        return torch.cat((w[:, half:], w[:, :half]), dim=1)

    return _reference_combine(layer, dispatch, method.runner.config.swiglu_limit, swap)


#: The small case each check runs on a wrong kernel.
WRONG_KERNEL_CASE = {"check_fp8_marlin_linear": dict(shapes=SMALL_DENSE, tokens=(3,)),
                     "check_mxfp4_marlin_moe": dict(shape=SMALL_MOE, tokens=(5,))}


@pytest.mark.parametrize("check,wrong", [
    ("check_fp8_marlin_linear", _scale_grid_flipped), ("check_fp8_marlin_linear", _one_scale_per_tensor),
    ("check_fp8_marlin_linear", _float32_output), ("check_mxfp4_marlin_moe", _scaled_twice),
    ("check_mxfp4_marlin_moe", _no_clamp), ("check_mxfp4_marlin_moe", _gate_up_swapped),
], ids=["fp8-scale-rows-flipped", "fp8-one-scale", "fp8-float32-out", "moe-routed-scaling-twice",
        "moe-no-swiglu-clamp", "moe-gate-up-swapped"])
def test_check_fails_on_a_wrong_kernel(nc, seed, check, wrong):
    """Each check with a deliberately wrong kernel in place of the method's ``apply``."""
    with pytest.raises(CheckFailed):
        getattr(nc, check)(device="cpu", seed=seed, apply=wrong, **WRONG_KERNEL_CASE[check])


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
