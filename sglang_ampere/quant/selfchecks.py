"""GPU self-checks of the dsv4_int methods: SGLang's Marlin kernels (and the opt-in Triton
WNA16 MoE) against the torch reference, on real DeepSeek-V4-Flash shapes.

Used by ``sglang-ampere selftest`` and ``tests/gpu/test_quant_gpu.py``. Each check builds the
layer exactly as the model does (our method's ``create_weights`` -> random dsv4_int codes and
BF16 scales -> ``process_weights_after_loading``, i.e. the Marlin repack), runs the method's
``apply``, and compares with :func:`~sglang_ampere.quant.int8_linear.reference_linear` /
:func:`~sglang_ampere.quant.int4_moe.reference_moe` on the original (pre-repack) tensors.
It returns a one-line detail or raises :class:`~sglang_ampere.checking.CheckFailed` (never
``assert``, so ``python -O`` cannot turn a failure into a pass). The first call JIT-compiles
SGLang's Marlin modules for this GPU (minutes, once; cached under ~/.cache/sglang/jit).

The same functions run on CPU with small shapes in the CPU test-suite (both sides are then
the reference path), which keeps their plumbing honest where no GPU exists.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Callable

import torch

from ..checking import rel_frobenius, require, require_close, require_cuda_sm80

#: Relative (Frobenius) error bound, BF16 activations / outputs.
TOL = 1e-2

#: (name, N, K) of the dsv4_int dense INT8 layers at TP=1 (hidden 4096, q_lora 1024,
#: head 512, 64 heads, o_groups 8 x o_lora 1024, index 64 x 128, moe_inter 2048).
DENSE_SHAPES = [
    ("wq_a", 1024, 4096), ("wkv", 512, 4096), ("wq_b", 32768, 1024), ("wo_b", 4096, 8192),
    ("indexer.wq_b", 8192, 1024), ("shared.gate_up", 4096, 4096), ("shared.down", 4096, 2048),
]
DENSE_TOKENS = (1, 7, 64, 512)
#: Routed experts: hidden 4096, intermediate 2048 (TP=1), top-6; 16 of the 256 experts.
MOE_SHAPE = dict(experts=16, hidden=4096, inter=2048, topk=6)
MOE_TOKENS = (1, 8, 100)
SWIGLU_LIMIT = 10.0
ROUTED_SCALING = 1.5


def _require_ampere(device: str) -> None:
    if device == "cuda":
        require_cuda_sm80("the dsv4_int kernel checks")


def random_moe_input(m: int, shape: dict, gen: torch.Generator, device: str, weight_scale: float = 1.0):
    """``(x, topk_output)`` for ``m`` tokens: BF16 activations of scale 3, distinct top-k experts from
    random router logits, positive top-k weights renormalised to ``weight_scale`` (as TopK gives them)."""
    from sglang.srt.layers.moe.topk import StandardTopKOutput

    x = (3.0 * torch.randn(m, shape["hidden"], generator=gen)).to(device=device, dtype=torch.bfloat16)
    logits = torch.randn(m, shape["experts"], generator=gen)
    ids = logits.topk(shape["topk"], dim=1).indices.to(torch.int32)
    w = torch.rand(m, shape["topk"], generator=gen) + 0.1
    w = (w / w.sum(1, keepdim=True) * weight_scale).float()
    return x, StandardTopKOutput(w.to(device), ids.to(device), logits.to(device))


def make_int8_layer(strategy: str, n: int, k: int, device: str, gen: torch.Generator):
    """A linear layer as SGLang builds it with Dsv4Int8LinearMethod, holding random codes."""
    from .int8_linear import Dsv4Int8LinearMethod

    method = Dsv4Int8LinearMethod(SimpleNamespace(strategy=strategy), prefix=f"check.{strategy}.{n}x{k}")
    layer = torch.nn.Module()
    with torch.device(device):
        method.create_weights(layer, k, [n], k, n, torch.bfloat16, weight_loader=lambda *a, **kw: None)
    if strategy == "block":
        q = torch.randint(-127, 128, (n, k), generator=gen, dtype=torch.int8)
        s = (torch.rand((n + 127) // 128, (k + 127) // 128, generator=gen) + 0.5) * 2.0 ** -7
    else:
        q = torch.randint(1, 256, (n, k), generator=gen, dtype=torch.int16).to(torch.uint8)
        s = (torch.rand(n, generator=gen) + 0.5) * 2.0 ** -7
    layer.weight.data.copy_(q)
    layer.weight_scale_inv.data.copy_(s.to(torch.bfloat16))
    original = (layer.weight.data.clone(), layer.weight_scale_inv.data.clone())
    method.process_weights_after_loading(layer)
    return method, layer, original


def check_int8_linear(
    strategy: str, device: str = "cuda", shapes=DENSE_SHAPES, tokens=DENSE_TOKENS, seed: int = 0
) -> str:
    from .int8_linear import reference_linear

    _require_ampere(device)
    gen = torch.Generator().manual_seed(seed)
    worst, marlin = 0.0, None
    for name, n, k in shapes:
        method, layer, (w0, s0) = make_int8_layer(strategy, n, k, device, gen)
        marlin = layer.dsv4_int8_marlin
        if device == "cuda":
            require(bool(marlin), f"{name}: the Marlin path was not taken on {torch.cuda.get_device_name()}")
        for m in tokens:
            x = torch.randn(m, k, generator=gen).to(device=device, dtype=torch.bfloat16)
            got = method.apply(layer, x)
            ref = reference_linear(x, w0, s0, strategy)
            require(got.shape == ref.shape and got.dtype == torch.bfloat16, f"{name} M={m}: {got.shape} {got.dtype}")
            err = rel_frobenius(got, ref)
            require_close(f"{name} [{n}x{k}] M={m}", "relative error", err, TOL)
            worst = max(worst, err)
        del layer
    return f"{len(shapes)} shapes x M{list(tokens)}, worst rel err {worst:.1e} ({'Marlin' if marlin else 'reference'})"


def make_moe_layer(backend: str, device: str, gen: torch.Generator, experts: int, hidden: int, inter: int, topk: int):
    """A FusedMoE-like layer with Dsv4Int4MoEMethod parameters and runner, random codes."""
    from sglang.srt.layers.moe.moe_runner.base import MoeRunnerConfig

    from .int4_moe import Dsv4Int4MoEMethod

    method = Dsv4Int4MoEMethod(SimpleNamespace(), prefix=f"check.moe.{backend}")
    method.backend = backend
    layer = torch.nn.Module()
    with torch.device(device):
        method.create_weights(layer, experts, hidden, inter, torch.bfloat16, weight_loader=lambda *a, **kw: None)
    for name in ("w13_weight", "w2_weight"):
        p = getattr(layer, name)
        p.data.copy_(torch.randint(-128, 128, tuple(p.shape), generator=gen, dtype=torch.int8))
    for name in ("w13_weight_scale_inv", "w2_weight_scale_inv"):
        p = getattr(layer, name)
        p.data.copy_(((torch.rand(tuple(p.shape), generator=gen) + 0.5) * 2.0 ** -6).to(torch.bfloat16))
    original = {
        n: getattr(layer, n).data.clone()
        for n in ("w13_weight", "w13_weight_scale_inv", "w2_weight", "w2_weight_scale_inv")
    }
    cfg = MoeRunnerConfig(num_experts=experts, num_local_experts=experts, hidden_size=hidden,
                          intermediate_size_per_partition=inter, top_k=topk, params_dtype=torch.bfloat16,
                          routed_scaling_factor=ROUTED_SCALING, swiglu_limit=SWIGLU_LIMIT, inplace=False)
    # What FusedMoE provides to the method and to SGLang's Marlin shape check.
    layer.hidden_size, layer.intermediate_size_per_partition, layer.moe_runner_config = hidden, inter, cfg
    layer.dispatcher = SimpleNamespace(local_expert_mapping=None, num_experts=experts)
    method.create_moe_runner(layer, cfg)
    method.process_weights_after_loading(layer)
    return method, layer, original


def check_int4_moe(backend: str = "marlin", device: str = "cuda", shape=None, tokens=MOE_TOKENS, seed: int = 0) -> str:
    from sglang.srt.layers.moe.token_dispatcher.standard import StandardDispatchOutput

    from .int4_moe import reference_moe

    _require_ampere(device)
    shape = dict(MOE_SHAPE if shape is None else shape)
    gen = torch.Generator().manual_seed(seed)
    method, layer, o = make_moe_layer(backend, device, gen, **shape)
    if device == "cuda":
        require(method.active == backend, f"expected the {backend} path, got {method.active}")
    worst, clamp_effect = 0.0, 0.0
    for m in tokens:
        x, topk = random_moe_input(m, shape, gen, device)
        w, ids = topk.topk_weights, topk.topk_ids
        out = method.apply(layer, StandardDispatchOutput(hidden_states=x, hidden_states_scale=None, topk_output=topk))
        got = out.hidden_states
        # The runners (CUDA) apply routed scaling; the reference then does too.
        scale = ROUTED_SCALING if x.is_cuda else None
        ref = reference_moe(x, o["w13_weight"], o["w13_weight_scale_inv"], o["w2_weight"], o["w2_weight_scale_inv"],
                            w, ids, SWIGLU_LIMIT, scale)
        require(got.shape == ref.shape, f"M={m}: {got.shape} vs {ref.shape}")
        err = rel_frobenius(got, ref)
        require_close(f"{backend} MoE M={m}", "relative error", err, TOL)
        worst = max(worst, err)
        unclamped = reference_moe(
            x,
            o["w13_weight"],
            o["w13_weight_scale_inv"],
            o["w2_weight"],
            o["w2_weight_scale_inv"],
            w,
            ids,
            None,
            scale,
        )
        clamp_effect = max(clamp_effect, rel_frobenius(unclamped, ref))
    return (f"E={shape['experts']} H={shape['hidden']} I={shape['inter']} top{shape['topk']} M{list(tokens)}: "
            f"worst rel err {worst:.1e} ({method.active}); SwiGLU clamp changes the output by {clamp_effect:.0%}")


def gpu_checks() -> list[tuple[str, Callable[[], str]]]:
    return [
        ("dsv4_int W8A16 linear, block (Marlin uint8b128 g128)", lambda: check_int8_linear("block")),
        ("dsv4_int W8A16 linear, channel (Marlin uint8b128 per-channel)", lambda: check_int8_linear("channel")),
        ("dsv4_int W4A16 MoE (Marlin uint4b8 g32)", lambda: check_int4_moe("marlin")),
        ("dsv4_int W4A16 MoE (Triton WNA16, opt-in)", lambda: check_int4_moe("triton")),
    ]
