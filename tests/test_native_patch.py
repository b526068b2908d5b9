"""``patches/dsv4_native``: the AROUND hook on ``Fp8Config.get_quant_method``, registered through the
plugin into SGLang's real HookRegistry and called through the patched class.

The Ampere-path decision is replaced per test (this machine has no GPU); the layers are bare
instances of SGLang's ``FusedMoE`` / ``ReplicatedLinear`` classes (the config only dispatches on
their type), and the methods are the ones SGLang's real ``get_quant_method`` returns for the chosen
MoE runner backend."""

from __future__ import annotations

import pytest

pytest.importorskip("sglang")

from helpers.sglang_cpu import init_sglang_cpu


@pytest.fixture(scope="module")
def env():
    init_sglang_cpu()
    import sglang.srt.models.deepseek_v4  # noqa: F401  (the wo_a decision lives there)
    from sglang.srt.layers.linear import ReplicatedLinear
    from sglang.srt.layers.moe.fused_moe_triton.layer import FusedMoE

    from sglang_ampere import plugin
    from sglang_ampere.patches import dsv4_native
    from sglang_ampere.quant import native_selfchecks

    plugin.register()
    assert plugin.hook_in_effect(dsv4_native.TARGET, dsv4_native.get_quant_method_hook)
    return dict(patch=dsv4_native, checks=native_selfchecks, moe=FusedMoE.__new__(FusedMoE),
                linear=ReplicatedLinear.__new__(ReplicatedLinear))


@pytest.fixture
def ampere(env, monkeypatch):
    import sglang.srt.models.deepseek_v4 as dsv4

    monkeypatch.setattr(env["patch"], "on_ampere_path", lambda: True)
    monkeypatch.setattr(dsv4, "_FP8_WO_A_GEMM", False)        # as SGLANG_OPT_FP8_WO_A_GEMM=0 leaves it
    return env


def dsv4_config(env, **flags):
    return env["checks"].native_quant_config(**{"is_fp4_experts": True, "is_dsv4_fp4_experts": True, **flags})


def backend(name):
    from sglang.srt.layers.moe.utils import MoeRunnerBackend

    return MoeRunnerBackend(name)


def test_marlin_backend_gets_the_gate_lifted_method(ampere):
    from sglang.srt.layers.quantization.fp8 import Fp8MoEMethod

    from sglang_ampere.quant.native_marlin_moe import AmpereMxfp4MarlinMoEMethod

    with ampere["checks"].moe_runner_backend(backend("marlin")):
        method = dsv4_config(ampere).get_quant_method(ampere["moe"], "model.layers.3.mlp.experts")
    assert type(method) is AmpereMxfp4MarlinMoEMethod
    assert isinstance(method._fp8, Fp8MoEMethod) and method.prefix == "model.layers.3.mlp.experts"
    assert method.fuse_routed_scaling_factor_in_topk is True


@pytest.mark.parametrize("name", ["auto", "triton", "flashinfer_mxfp4"])
def test_other_moe_backends_are_refused_naming_the_flag(ampere, name):
    with ampere["checks"].moe_runner_backend(backend(name)):
        with pytest.raises(ampere["patch"].NativeAmpereError,
                           match=rf"experts: --moe-runner-backend {name} .*--moe-runner-backend marlin"):
            dsv4_config(ampere).get_quant_method(ampere["moe"], "model.layers.1.mlp.experts")


def test_fp4_dequant_is_refused(ampere):
    with ampere["checks"].moe_runner_backend(backend("auto")):
        with pytest.raises(ampere["patch"].NativeAmpereError, match="SGLANG_DSV4_FP4_DEQUANT=1"):
            dsv4_config(ampere, dequant_fp4_to_fp8=True).get_quant_method(ampere["moe"], "x.experts")


def test_fp8_experts_are_refused(ampere):
    with ampere["checks"].moe_runner_backend(backend("marlin")):
        with pytest.raises(ampere["patch"].NativeAmpereError, match="routed experts are FP8"):
            dsv4_config(ampere, is_fp4_experts=False).get_quant_method(ampere["moe"], "x.experts")


def test_dense_fp8_must_take_marlin(ampere, monkeypatch):
    from sglang.srt.layers.quantization import fp8

    cfg = dsv4_config(ampere)
    # SGLang decides use_marlin on CUDA only (fp8.py ~514); as on a CUDA card that is not sm_80..sm_88
    # (an sm_90+ card under the Ampere target), it stays off without SGLANG_FORCE_FP8_MARLIN=1.
    monkeypatch.setattr(fp8, "_is_cuda", True)
    monkeypatch.delenv("SGLANG_FORCE_FP8_MARLIN", raising=False)
    with pytest.raises(ampere["patch"].NativeAmpereError, match="wq_b: .*SGLANG_FORCE_FP8_MARLIN=1"):
        cfg.get_quant_method(ampere["linear"], "model.layers.0.self_attn.wq_b")
    monkeypatch.setenv("SGLANG_FORCE_FP8_MARLIN", "1")
    method = cfg.get_quant_method(ampere["linear"], "model.layers.0.self_attn.wq_b")
    assert type(method) is fp8.Fp8LinearMethod and method.use_marlin


def test_fp8_wo_a_einsum_is_refused(ampere, monkeypatch):
    import sglang.srt.models.deepseek_v4 as dsv4

    monkeypatch.setattr(dsv4, "_FP8_WO_A_GEMM", True)
    with pytest.raises(ampere["patch"].NativeAmpereError, match="SGLANG_OPT_FP8_WO_A_GEMM=0"):
        dsv4_config(ampere).get_quant_method(ampere["linear"], "model.layers.0.self_attn.wo_b")


def test_a2a_backends_are_refused(ampere, monkeypatch):
    from sglang.srt.layers.moe import utils as moe_utils

    monkeypatch.setattr(moe_utils, "get_moe_a2a_backend", lambda: moe_utils.MoeA2ABackend("deepep"))
    with ampere["checks"].moe_runner_backend(backend("marlin")):
        with pytest.raises(ampere["patch"].NativeAmpereError, match="--moe-a2a-backend deepep"):
            dsv4_config(ampere).get_quant_method(ampere["moe"], "x.experts")


def test_shared_expert_fusion_is_refused(ampere):
    from sglang.srt.layers.moe.fused_moe_triton.layer import FusedMoE

    layer = FusedMoE.__new__(FusedMoE)
    layer.num_fused_shared_experts = 1         # what --enforce-shared-experts-fusion gives FusedMoE
    with ampere["checks"].moe_runner_backend(backend("marlin")):
        with pytest.raises(ampere["patch"].NativeAmpereError, match="--enforce-shared-experts-fusion"):
            dsv4_config(ampere).get_quant_method(layer, "x.experts")


def test_other_models_and_other_gpus_are_left_alone(env, monkeypatch):
    from sglang.srt.layers.quantization.fp8 import Fp8LinearMethod, Fp8MoEMethod
    from sglang.srt.layers.quantization.mxfp4_marlin_moe import Mxfp4MarlinMoEMethod

    monkeypatch.setattr(env["patch"], "on_ampere_path", lambda: True)
    with env["checks"].moe_runner_backend(backend("auto")):
        # Not DeepSeek-V4: SGLang's own choice, nothing refused.
        other = env["checks"].native_quant_config(is_fp4_experts=True)
        assert type(other.get_quant_method(env["moe"], "x.experts")) is Fp8MoEMethod
        assert type(other.get_quant_method(env["linear"], "x.proj")) is Fp8LinearMethod
    # A CUDA card off the Ampere path (Hopper): SGLang's Marlin method unchanged.
    monkeypatch.setattr(env["patch"], "on_ampere_path", lambda: False)
    monkeypatch.setattr(env["patch"], "_cuda_present", lambda: True)
    with env["checks"].moe_runner_backend(backend("marlin")):
        assert type(dsv4_config(env).get_quant_method(env["moe"], "x.experts")) is Mxfp4MarlinMoEMethod
