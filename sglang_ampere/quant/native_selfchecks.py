"""GPU self-checks of the native checkpoint's kernels: SGLang's FP8 Marlin W8A16 linear and its MXFP4
Marlin MoE (through :class:`~.native_marlin_moe.AmpereMxfp4MarlinMoEMethod`, the gate-lifted method
``patches/dsv4_native.py`` hands out), against the torch references on real DeepSeek-V4 shapes.

Listed by ``sglang-ampere selftest`` (a provider in :data:`sglang_ampere.commands.selftest.PROVIDERS`) and run by
``tests/gpu/test_quant_gpu.py``. Each check builds the layer the way the model does: SGLang's method
``create_weights`` -> random checkpoint-format codes and scales -> ``process_weights_after_loading``
(the Marlin repack) -> the method's ``apply``, and compares with
:func:`~.native_linear.reference_fp8_linear` / :func:`~.moe_reference.reference_moe` (experts decoded once
by :func:`~sglang_ampere.formats.mxfp4_dequantize`) on the tensors as loaded. A failure raises
:class:`~sglang_ampere.checking.CheckFailed` (never ``assert``).

Without CUDA the same functions run on small shapes (the methods then take their torch paths) so CPU
tests keep the plumbing and the pass/fail logic honest; ``apply`` can be replaced by a deliberately
wrong kernel to prove a check fails.
"""

from __future__ import annotations

import contextlib
import os
from types import SimpleNamespace
from typing import Callable, Optional

import torch

from .. import envvars
from ..checking import CheckFailed, rel_frobenius, require, require_close, require_cuda_sm80
from .selfchecks import DENSE_SHAPES, DENSE_TOKENS, MOE_TOKENS, ROUTED_SCALING, SWIGLU_LIMIT, TOL, random_moe_input

#: Routed experts as in V4-Flash at TP=1: hidden 4096, intermediate 2048, top-6; 8 of the 256 experts.
MOE_SHAPE = dict(experts=8, hidden=4096, inter=2048, topk=6)
#: The SwiGLU clamp must change the reference output by at least this much on the check's inputs,
#: so a kernel that ignores the clamp cannot pass.
MIN_CLAMP_EFFECT = 5 * TOL
#: E4M3 bytes that are NaN (never in a checkpoint).
_E4M3_NAN = (0x7F, 0xFF)


def native_quant_config(**flags):
    """SGLang's ``Fp8Config`` from the release's ``quantization_config`` (as ``synth`` writes it)."""
    from sglang.srt.layers.quantization.fp8 import Fp8Config

    from ..synth import SynthSpec, make_config

    cfg = Fp8Config.from_config(dict(make_config(SynthSpec())["quantization_config"]))
    for name, value in flags.items():
        setattr(cfg, name, value)
    return cfg


@contextlib.contextmanager
def moe_runner_backend(backend):
    """SGLang's process-wide MoE runner backend (``--moe-runner-backend``) set for a block, then restored."""
    from sglang.srt.layers.moe.utils import get_moe_runner_backend
    from sglang.srt.runtime_context import get_flags

    moe = get_flags().moe
    saved = get_moe_runner_backend()
    moe.runner_backend = backend
    try:
        yield
    finally:
        moe.runner_backend = saved


@contextlib.contextmanager
def _env(name: str, value: str):
    saved = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = saved


def _device(device: str) -> None:
    if device == "cuda":
        require_cuda_sm80("the native FP8/MXFP4 kernel checks")


def _e8m0_bytes(shape, low: int, high: int, gen: torch.Generator) -> torch.Tensor:
    return torch.randint(low, high + 1, tuple(shape), generator=gen, dtype=torch.int32).to(torch.uint8)


def _scale_byte(k: int, target_std: float = 12.0, act_std: float = 3.0) -> int:
    """An E8M0 byte giving GEMM outputs of about ``target_std`` for K inputs of std ``act_std``
    (E2M1 codes drawn uniformly have std ~2.9), so the SwiGLU clamp at 10 matters."""
    import math

    return 127 + round(math.log2(target_std / (act_std * math.sqrt(k) * 2.9)))


# --- FP8 Marlin W8A16 linear ------------------------------------------------------------------

def make_fp8_layer(n: int, k: int, device: str, gen: torch.Generator):
    """SGLang's ``ReplicatedLinear`` under the native ``Fp8Config`` (``Fp8LinearMethod``, FP8 Marlin
    forced on as the Ampere path requires), holding random FP8 codes and E8M0-valued block scales."""
    from sglang.srt.layers.linear import ReplicatedLinear

    with _env(envvars.SGLANG_FORCE_FP8_MARLIN, "1"), torch.device(device):
        layer = ReplicatedLinear(k, n, bias=False, quant_config=native_quant_config(), params_dtype=torch.bfloat16,
                                 prefix=f"check.fp8.{n}x{k}")
    method = layer.quant_method
    codes = torch.randint(0, 256, (n, k), generator=gen, dtype=torch.int32).to(torch.uint8)
    codes[(codes == _E4M3_NAN[0]) | (codes == _E4M3_NAN[1])] = 0x3F
    nb, kb = layer.weight_scale_inv.shape
    scale = torch.ldexp(torch.ones(nb, kb), _e8m0_bytes((nb, kb), 118, 124, gen).to(torch.int32) - 127)
    layer.weight.data.copy_(codes.view(torch.float8_e4m3fn))
    layer.weight_scale_inv.data.copy_(scale)
    original = (layer.weight.data.cpu().clone(), layer.weight_scale_inv.data.cpu().clone())
    method.process_weights_after_loading(layer)
    return method, layer, original


def _reference_linear_apply(method, layer, x):
    from .native_linear import reference_fp8_linear

    return reference_fp8_linear(x, layer.weight, layer.weight_scale_inv)


def check_fp8_marlin_linear(device: str = "cuda", shapes=DENSE_SHAPES, tokens=DENSE_TOKENS, seed: int = 0,
                            apply: Optional[Callable] = None) -> str:
    """FP8 Marlin W8A16 vs :func:`reference_fp8_linear`; on CUDA also: the weight is Marlin words and
    no dequantized copy of it is kept. ``apply(method, layer, x)`` defaults to the method's own
    (CUDA) or the torch reference (CPU)."""
    from .native_linear import MARLIN_WEIGHT_DTYPE, reference_fp8_linear, weight_copies

    _device(device)
    if apply is None:
        apply = (lambda method, layer, x: method.apply(layer, x)) if device == "cuda" else _reference_linear_apply
    gen = torch.Generator().manual_seed(seed)
    worst = 0.0
    for name, n, k in shapes:
        method, layer, (w0, s0) = make_fp8_layer(n, k, device, gen)
        if device == "cuda":
            require(method.use_marlin and layer.weight.dtype == MARLIN_WEIGHT_DTYPE,
                    f"{name}: FP8 Marlin was not prepared "
                    f"(use_marlin={method.use_marlin}, weight {layer.weight.dtype})")
            copies = weight_copies(layer, n, k)
            require(not copies, f"{name}: the layer keeps a dequantized copy of its weight: {copies}")
        for m in tokens:
            x = torch.randn(m, k, generator=gen).to(device=device, dtype=torch.bfloat16)
            got = apply(method, layer, x)
            ref = reference_fp8_linear(x, w0, s0)
            require(tuple(got.shape) == tuple(ref.shape) and got.dtype == torch.bfloat16,
                    f"{name} M={m}: got {tuple(got.shape)} {got.dtype}, want {tuple(ref.shape)} bfloat16")
            err = rel_frobenius(got, ref)
            require_close(f"{name} [{n}x{k}] M={m}", "relative error", err, TOL)
            worst = max(worst, err)
        del layer
    path = "FP8 Marlin" if device == "cuda" else "reference"
    return f"{len(shapes)} shapes x M{list(tokens)}, worst rel err {worst:.1e} ({path}, no BF16 weight copy)"


# --- MXFP4 Marlin MoE ------------------------------------------------------------------------

def make_mxfp4_moe_layer(device: str, gen: torch.Generator, experts: int, hidden: int, inter: int, topk: int):
    """A FusedMoE-like layer with the gate-lifted MXFP4 Marlin method (SGLang's create_weights,
    runner and post-loading steps), random E2M1 codes and E8M0 scales."""
    from sglang.srt.layers.moe.moe_runner.base import MoeRunnerConfig
    from sglang.srt.layers.moe.utils import MoeRunnerBackend
    from sglang.srt.layers.quantization.fp8 import Fp8MoEMethod

    from .native_marlin_moe import AmpereMxfp4MarlinMoEMethod

    config = native_quant_config(is_fp4_experts=True, is_dsv4_fp4_experts=True)
    with moe_runner_backend(MoeRunnerBackend.MARLIN):
        method = AmpereMxfp4MarlinMoEMethod(Fp8MoEMethod(config), prefix="check.native_moe")
        cfg = MoeRunnerConfig(num_experts=experts, num_local_experts=experts, hidden_size=hidden,
                              intermediate_size_per_partition=inter, top_k=topk, params_dtype=torch.bfloat16,
                              routed_scaling_factor=ROUTED_SCALING, swiglu_limit=SWIGLU_LIMIT, inplace=False)
        layer = torch.nn.Module()
        # What FusedMoE provides to the method and to SGLang's Marlin shape check.
        layer.hidden_size, layer.intermediate_size_per_partition, layer.moe_runner_config = hidden, inter, cfg
        layer.num_local_experts = experts
        layer.dispatcher = SimpleNamespace(local_expert_mapping=None, num_experts=experts,
                                           set_quant_config=lambda quant_config: None)
        with torch.device(device):
            method.create_weights(layer, experts, hidden, inter, torch.bfloat16, weight_loader=lambda *a, **kw: None)
        for name in ("w13_weight", "w2_weight"):
            p = getattr(layer, name)
            p.data.copy_(torch.randint(-128, 128, tuple(p.shape), generator=gen, dtype=torch.int8))
        for name, k in (("w13_weight_scale_inv", hidden), ("w2_weight_scale_inv", inter)):
            p = getattr(layer, name)
            b = _scale_byte(k)
            p.data.copy_(_e8m0_bytes(p.shape, b - 1, b, gen).view(torch.float8_e8m0fnu))
        original = {n: getattr(layer, n).data.cpu().clone()
                    for n in ("w13_weight", "w13_weight_scale_inv", "w2_weight", "w2_weight_scale_inv")}
        method.create_moe_runner(layer, cfg)
        method.process_weights_after_loading(layer)
    return method, layer, original


def check_mxfp4_marlin_moe(device: str = "cuda", shape=None, tokens=MOE_TOKENS, seed: int = 0,
                           apply: Optional[Callable] = None) -> str:
    """The gate-lifted MXFP4 Marlin MoE vs :func:`reference_mxfp4_moe`. Top-k weights carry the
    routed scaling factor, as SGLang's TopK gives them to this method (it fuses the factor in top-k);
    the reference then sums without scaling again, so a kernel that scales twice fails."""
    from sglang.srt.layers.moe.token_dispatcher.standard import StandardDispatchOutput

    from ..formats import mxfp4_dequantize
    from .moe_reference import reference_moe
    from .native_marlin_moe import MARLIN, REFERENCE

    _device(device)
    shape = dict(MOE_SHAPE if shape is None else shape)
    gen = torch.Generator().manual_seed(seed)
    method, layer, o = make_mxfp4_moe_layer(device, gen, **shape)
    want = MARLIN if device == "cuda" else REFERENCE
    require(method.active == want and layer._dsv4_mxfp4_backend == want,
            f"expected the {want} path, got {method.active} / {layer._dsv4_mxfp4_backend}")
    require(method.fuse_routed_scaling_factor_in_topk is True,
            "the method no longer fuses routed scaling into top-k; the factor would be applied a second time or never")
    if apply is None:
        def apply(method, layer, dispatch):
            return method.apply(layer, dispatch)
    # The reference's experts, dequantized once from the tensors as loaded (decoded on the host).
    experts = [(mxfp4_dequantize(o["w13_weight"][e], o["w13_weight_scale_inv"][e]).to(device),
                mxfp4_dequantize(o["w2_weight"][e], o["w2_weight_scale_inv"][e]).to(device))
               for e in range(shape["experts"])]
    worst, clamp_effect = 0.0, 0.0
    for m in tokens:
        x, topk = random_moe_input(m, shape, gen, device, weight_scale=ROUTED_SCALING)
        dispatch = StandardDispatchOutput(hidden_states=x, hidden_states_scale=None, topk_output=topk)
        got = apply(method, layer, dispatch).hidden_states
        args = (x, experts.__getitem__, shape["hidden"], topk.topk_weights, topk.topk_ids)
        ref = reference_moe(*args, SWIGLU_LIMIT, None)
        require(tuple(got.shape) == tuple(ref.shape), f"M={m}: output {tuple(got.shape)}, want {tuple(ref.shape)}")
        err = rel_frobenius(got, ref)
        require_close(f"MXFP4 Marlin MoE M={m}", "relative error", err, TOL)
        worst = max(worst, err)
        clamp_effect = max(clamp_effect, rel_frobenius(reference_moe(*args, None, None), ref))
    require(clamp_effect >= MIN_CLAMP_EFFECT,
            f"the check's inputs do not exercise the SwiGLU clamp (it changes the output by {clamp_effect:.1e} < "
            f"{MIN_CLAMP_EFFECT:.0e}); a kernel without the clamp could pass")
    return (f"E={shape['experts']} H={shape['hidden']} I={shape['inter']} top{shape['topk']} M{list(tokens)}: "
            f"worst rel err {worst:.1e} ({method.active}); SwiGLU clamp changes the output by {clamp_effect:.0%}")


def gpu_checks() -> list[tuple[str, Callable[[], str]]]:
    return [
        ("native FP8 W8A16 linear (SGLang FP8 Marlin, block 128)", lambda: check_fp8_marlin_linear()),
        ("native MXFP4 MoE (SGLang Marlin, SM90/SM120 gate lifted)", lambda: check_mxfp4_marlin_moe()),
    ]


__all__ = ["CheckFailed", "MOE_SHAPE", "check_fp8_marlin_linear", "check_mxfp4_marlin_moe", "gpu_checks",
           "make_fp8_layer", "make_mxfp4_moe_layer", "moe_runner_backend", "native_quant_config"]
