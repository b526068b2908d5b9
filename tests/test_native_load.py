"""The native DeepSeek-V4 checkpoint (FP8 dense, MXFP4 experts) loads into SGLang 0.5.23's real
DeepseekV4ForCausalLM on CPU through Fp8Config with ``--moe-runner-backend marlin`` and the
``dsv4_native`` hook registered through SGLang's real HookRegistry (the plugin).

SGLang's own ModelConfig -> get_quant_config (Fp8Config) -> _initialize_model -> load_weights ->
postprocess path, with the FP8 wo_a einsum off as on the Ampere path (``SGLANG_OPT_FP8_WO_A_GEMM=0``,
which SGLang reads at import: the test sets the module global it was read into). Every parameter is
pre-filled with a sentinel, then every checkpoint tensor is compared exactly at its independently
expected place (the map of ``helpers.dsv4int``, with the native dtypes), and every element of every
parameter must be covered. Without the hook the same load stops at SGLang's
"MXFP4 Marlin requires SM90 or SM120" (checked on one layer).
"""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("sglang")

from helpers.dsv4int import expected_locations, load_real_model, read_checkpoint
from helpers.environment import sglang_env
from helpers.sglang_cpu import init_sglang_cpu

pytestmark = pytest.mark.slow

E8M0 = torch.float8_e8m0fnu


def e8m0_value(t: torch.Tensor) -> torch.Tensor:
    """Independent E8M0 decode (not the package's codec): byte b -> 2^(b-127), float32."""
    return torch.ldexp(torch.ones(t.shape), t.view(torch.uint8).to(torch.int32) - 127)


def fp8_block_bf16(w: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """Independent FP8 x 128x128-E8M0 dequant to BF16 (what SGLang's wo_a path must produce)."""
    full = e8m0_value(s).repeat_interleave(128, 0).repeat_interleave(128, 1)[: w.shape[0], : w.shape[1]]
    return (w.float() * full).to(torch.bfloat16)


def native_expected(ckpt, config, fused):
    """``expected_locations`` with the native dtypes: FP8 dense scales land as float32, wo_a as BF16."""
    # The shared map dequantizes an INT8 wo_a itself; give it INT8 stand-ins and replace the value.
    stand_ins = {n: torch.zeros(t.shape, dtype=torch.int8 if n.endswith("weight") else torch.bfloat16)
                 for n, t in ckpt.items() if ".attn.wo_a." in n}
    out = []
    for name, pname, idx, value in expected_locations({**ckpt, **stand_ins}, config, "block", fused, nextn=False):
        if name.endswith(".attn.wo_a.weight"):
            value = fp8_block_bf16(ckpt[name], ckpt[name[: -len("weight")] + "scale"])
        elif value.dtype == E8M0 and ".ffn.experts." not in name:
            value = e8m0_value(value)
        out.append((name, pname, idx, value))
    return out


def as_comparable(t: torch.Tensor) -> torch.Tensor:
    return t.view(torch.uint8) if t.dtype in (E8M0, torch.float8_e4m3fn) else t


def is_unfilled(t: torch.Tensor) -> torch.Tensor:
    """The sentinels of ``helpers.dsv4int.sentinel_fill`` that no checkpoint value can equal (FP8 types
    by their NaN bytes). Packed E2M1 bytes may legitimately be -128 (codes 0 and 8); for them the exact
    comparison plus the full coverage above is the proof."""
    if t.dtype == torch.float8_e4m3fn:
        return (t.view(torch.uint8) & 0x7F) == 0x7F
    if t.dtype == E8M0:
        return t.view(torch.uint8) == 0xFF
    if t.is_floating_point():
        return torch.isnan(t)
    if t.dtype == torch.int32:
        return t == torch.iinfo(torch.int32).min
    return torch.zeros(t.shape, dtype=torch.bool)


@pytest.fixture(scope="module")
def marlin_native_env():
    """Plugin registered, MoE runner backend marlin, FP8 wo_a einsum off; all restored after."""
    init_sglang_cpu()
    import sglang.srt.models.deepseek_v4 as dsv4
    from sglang.srt.layers.moe.utils import MoeRunnerBackend

    from sglang_ampere import plugin
    from sglang_ampere.quant.native_selfchecks import moe_runner_backend

    plugin.register()
    saved = dsv4._FP8_WO_A_GEMM
    dsv4._FP8_WO_A_GEMM = False
    try:
        with moe_runner_backend(MoeRunnerBackend.MARLIN):
            yield plugin
    finally:
        dsv4._FP8_WO_A_GEMM = saved


def load_native(path):
    model, mc = load_real_model(path, draft=False, quantization="fp8")
    assert mc.is_fp4_experts
    return model


@pytest.mark.parametrize("fused", [False, True], ids=["separate_wqa_wkv", "fuse_wqa_wkv"])
def test_native_checkpoint_loads_exactly_through_the_marlin_method(marlin_native_env, synth_ckpt, fused):
    """``separate``: the sm80/sm86 presets' SGLANG_OPT_FUSE_WQA_WKV=0; ``fuse``: SGLang's default."""
    from sglang.srt.layers.quantization.fp8 import Fp8LinearMethod
    from sglang.srt.layers.quantization.mxfp4_marlin_moe import Mxfp4MarlinMoEMethod

    from sglang_ampere.patches import dsv4_native
    from sglang_ampere.quant.native_marlin_moe import REFERENCE, AmpereMxfp4MarlinMoEMethod

    assert marlin_native_env.hook_in_effect(dsv4_native.TARGET, dsv4_native.get_quant_method_hook)
    with sglang_env(SGLANG_OPT_FUSE_WQA_WKV=fused):
        model = load_native(synth_ckpt)
    ckpt = read_checkpoint(synth_ckpt)
    config = json.loads((synth_ckpt / "config.json").read_text())

    params = dict(model.named_parameters())
    covered = {n: torch.zeros(p.shape, dtype=torch.bool) for n, p in params.items()}
    expected = native_expected(ckpt, config, fused)
    target_names = [n for n in ckpt if not n.startswith("mtp.")]
    assert len(expected) == len(target_names) - sum(n.endswith(".wo_a.scale") for n in target_names)
    for name, pname, idx, value in expected:
        assert pname in params, f"{name}: expected parameter {pname} does not exist"
        got = params[pname].data[idx] if idx else params[pname].data
        assert tuple(got.shape) == tuple(value.shape), \
            f"{name} -> {pname}{idx}: {tuple(got.shape)} != {tuple(value.shape)}"
        if got.dtype != value.dtype:
            # SGLang keeps some BF16 checkpoint tensors (norms) in float32: a lossless upcast.
            assert got.dtype == torch.float32 and value.dtype == torch.bfloat16, f"{name}: {got.dtype} != {value.dtype}"
            value = value.float()
        assert torch.equal(as_comparable(got), as_comparable(value)), f"{name} -> {pname}{idx}: values differ"
        covered[pname][idx if idx else ...] = True
    for pname, mask in covered.items():
        if "attn_mqa.k_scale" in pname or "attn_mqa.v_scale" in pname:
            continue
        assert bool(mask.all()), f"{pname}: {int((~mask).sum())} of {mask.numel()} elements not from the checkpoint"
        assert not bool(is_unfilled(params[pname].data).any()), f"{pname} still holds sentinel values"

    experts = [m for m in model.modules() if hasattr(m, "w13_weight")]
    assert experts and all(type(m.quant_method) is AmpereMxfp4MarlinMoEMethod for m in experts)
    assert all(m.quant_method.active == REFERENCE and m.w13_weight.dtype == torch.int8 for m in experts)
    dense = [m for n, m in model.named_modules() if getattr(m, "weight", None) is not None
             and m.weight.dtype == torch.float8_e4m3fn]
    assert dense and all(isinstance(m.quant_method, Fp8LinearMethod) for m in dense)
    attn = model.model.layers[2].self_attn
    assert attn.wo_a.weight.dtype == torch.bfloat16 and not hasattr(attn.wo_a, "weight_scale_inv")
    assert hasattr(attn, "wqkv_a") == fused and hasattr(attn, "wq_a") != fused

    # Negative control: SGLang's own method on the same loaded layer stops at its gate.
    layer = experts[0]
    with pytest.raises(RuntimeError, match="MXFP4 Marlin requires SM90 or SM120"):
        Mxfp4MarlinMoEMethod.process_weights_after_loading(layer.quant_method, layer)
