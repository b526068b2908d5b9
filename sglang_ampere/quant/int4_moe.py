"""INT4 weight-only (W4A16) MoE method for dsv4_int routed experts.

Contract, per token ``t`` with selected experts ``e_j`` and top-k weights ``p_j``
(from SGLang's TopK / HashTopK, already renormalised)::

    h   = x_t @ W13[e]^T                  W13[e] = [W1[e]; W3[e]]  (gate rows first)
    g,u = h[:I], h[I:]
    g   = min(g, L); u = clamp(u, -L, L)  L = swiglu_limit (skipped when None)
    y_t = sum_j p_j * (silu(g) * u) @ W2[e_j]^T
    out = y * routed_scaling_factor       applied exactly once, see below

with ``W[n, k] = (stored[n, k] - 8) * scale[n, k // 32]`` (uint4b8 nibbles, low nibble =
even k; BF16 scales).

Parameters follow SGLang's DeepSeek-V4 expert mapping (``experts.E.w1/w3`` -> ``w13_*``
shard w1/w3, ``experts.E.w2`` -> ``w2_*``): ``w13_weight`` int8 ``[E, 2I, H/2]``,
``w2_weight`` int8 ``[E, H, I/2]``, ``w13_weight_scale_inv`` BF16 ``[E, 2I, H/32]``,
``w2_weight_scale_inv`` BF16 ``[E, H, I/32]`` (group scales, sharded by FusedMoE's loader).

Backends (``SGLANG_AMPERE_MOE_BACKEND``):

* ``marlin`` (default, CUDA sm_80+): each expert's bytes become GPTQ words and go through
  ``gptq_marlin_repack(num_bits=4)``; scales are transposed and Marlin-permuted (group 32).
  SGLang's Marlin runner multiplies by ``routed_scaling_factor`` in its final reduce.
* ``triton`` (opt-in, CUDA sm_80+): SGLang's Triton WNA16 MoE reads the checkpoint layout as
  is (``use_int4_w4a16``, ``block_shape=[0, 32]``, no zero point = subtract 8); its runner
  also applies ``routed_scaling_factor``.
* torch reference (no CUDA): dequantize + matmul per active expert
  (:mod:`.int4_reference`, no SGLang import; re-exported here). SGLang's DeepSeek MoE
  multiplies by ``routed_scaling_factor`` itself off CUDA (``deepseek_v2.py``: ``if not
  _is_cuda: final_hidden_states *= routed_scaling_factor``), so the reference does not;
  on a CUDA tensor it does, matching the runners. ``fuse_routed_scaling_factor_in_topk`` is
  left False so TopK never applies it a second time.
"""

from __future__ import annotations

import logging

import torch
from sglang.srt.layers.quantization.base_config import FusedMoEMethodBase
from torch.nn import Parameter

from .. import envvars
from ..formats.constants import INT4_GROUP
from . import marlin_layout
from .int4_reference import dequantize_expert, reference_moe

__all__ = ["Dsv4Int4MoEMethod", "dequantize_expert", "reference_moe"]

logger = logging.getLogger("sglang_ampere")


class Dsv4Int4MoEMethod(FusedMoEMethodBase):
    """W4A16 routed experts (uint4b8, group 32, BF16 scales)."""

    # The runners (CUDA) or the model (CPU) apply routed_scaling_factor; TopK must not.
    fuse_routed_scaling_factor_in_topk = False

    def __init__(self, quant_config, prefix: str = ""):
        self.quant_config = quant_config
        self.prefix = prefix
        self.backend = envvars.get(envvars.MOE_BACKEND)
        self.active = "reference"   # decided in process_weights_after_loading

    def create_weights(self, layer: torch.nn.Module, num_experts: int, hidden_size: int,
                       intermediate_size_per_partition: int, params_dtype: torch.dtype, **extra_weight_attrs):
        from sglang.srt.layers.moe.fused_moe_triton import FusedMoeWeightScaleSupported
        from sglang.srt.utils import set_weight_attrs

        h, i = hidden_size, intermediate_size_per_partition
        if h % INT4_GROUP or i % INT4_GROUP:
            raise ValueError(
                f"{self.prefix}: hidden {h} / per-rank intermediate {i} must be multiples of "
                f"{INT4_GROUP} for group-{INT4_GROUP} INT4 experts; use a smaller tensor-parallel size")
        attrs = {k: v for k, v in extra_weight_attrs.items() if k not in ("with_bias", "moe_intermediate_size")}
        shapes = {
            "w13_weight": ((num_experts, 2 * i, h // 2), torch.int8),
            "w2_weight": ((num_experts, h, i // 2), torch.int8),
            "w13_weight_scale_inv": ((num_experts, 2 * i, h // INT4_GROUP), torch.bfloat16),
            "w2_weight_scale_inv": ((num_experts, h, i // INT4_GROUP), torch.bfloat16),
        }
        for name, (shape, dtype) in shapes.items():
            param = Parameter(torch.empty(*shape, dtype=dtype), requires_grad=False)
            layer.register_parameter(name, param)
            extra = {"is_transposed": False}
            if "scale" in name:
                extra["quant_method"] = FusedMoeWeightScaleSupported.GROUP.value
            set_weight_attrs(param, {**attrs, **extra})
        layer.dsv4_int4_sizes = (h, i)

    def create_moe_runner(self, layer: torch.nn.Module, moe_runner_config) -> None:
        # Importing the runner modules registers their fused functions with FusedOpPool.
        import sglang.srt.layers.moe.moe_runner.marlin
        import sglang.srt.layers.moe.moe_runner.triton  # noqa: F401
        from sglang.srt.layers.moe.moe_runner import MoeRunner
        from sglang.srt.layers.moe.utils import MoeRunnerBackend

        self.moe_runner_config = moe_runner_config
        backend = MoeRunnerBackend.TRITON if self.backend == "triton" else MoeRunnerBackend.MARLIN
        self.runner = MoeRunner(backend, moe_runner_config)

    def process_weights_after_loading(self, layer: torch.nn.Module) -> None:
        dev = layer.w13_weight.device
        if dev.type != "cuda":
            self.active = "reference"
            return
        if torch.cuda.get_device_capability(dev) < (8, 0):
            raise RuntimeError(f"{self.prefix}: dsv4_int INT4 experts need CUDA sm_80+ (Marlin / Triton WNA16)")
        if self.backend == "triton":
            self._prepare_triton(layer)
            self.active = "triton"
            return
        self._prepare_marlin(layer)
        self.active = "marlin"

    def _prepare_triton(self, layer: torch.nn.Module) -> None:
        # Same bytes, read as unsigned nibbles by SGLang's fused_moe_kernel_gptq_awq.
        layer.w13_weight = Parameter(layer.w13_weight.data.view(torch.uint8), requires_grad=False)
        layer.w2_weight = Parameter(layer.w2_weight.data.view(torch.uint8), requires_grad=False)

    def _prepare_marlin(self, layer: torch.nn.Module) -> None:
        from sglang.kernels.ops.quantization.gptq_marlin_repack import gptq_marlin_repack
        from sglang.srt.layers.quantization.marlin_utils import (
            check_moe_marlin_supports_layer,
            marlin_permute_scales,
        )

        if not check_moe_marlin_supports_layer(layer, INT4_GROUP):
            raise RuntimeError(
                f"{self.prefix}: this MoE shape does not meet Marlin's limits (hidden % 128, "
                "intermediate % 64 per rank); run with SGLANG_AMPERE_MOE_BACKEND=triton")
        h, i = layer.dsv4_int4_sizes
        dev = layer.w13_weight.device
        perm = torch.empty(0, dtype=torch.int32, device=dev)

        def repack(w: torch.Tensor, n: int, k: int) -> torch.Tensor:
            return torch.stack([
                gptq_marlin_repack(marlin_layout.int4_to_gptq(w[e]), perm, size_k=k, size_n=n, num_bits=4)
                for e in range(w.shape[0])])

        def permute(s: torch.Tensor, n: int, k: int) -> torch.Tensor:
            groups = marlin_layout.expert_scales_to_groups(s)
            return torch.stack([marlin_permute_scales(groups[e], size_k=k, size_n=n, group_size=INT4_GROUP)
                                for e in range(s.shape[0])])

        layer.w13_weight = Parameter(repack(layer.w13_weight.data, 2 * i, h), requires_grad=False)
        layer.w2_weight = Parameter(repack(layer.w2_weight.data, h, i), requires_grad=False)
        layer.w13_weight_scale_inv = Parameter(permute(layer.w13_weight_scale_inv.data, 2 * i, h), requires_grad=False)
        layer.w2_weight_scale_inv = Parameter(permute(layer.w2_weight_scale_inv.data, h, i), requires_grad=False)

    def apply(self, layer: torch.nn.Module, dispatch_output):
        from sglang.srt.layers.moe.token_dispatcher.standard import StandardCombineInput

        topk_output = dispatch_output.topk_output
        if self.active == "marlin":
            from sglang.srt.layers.moe.moe_runner.marlin import MarlinMoeQuantInfo

            expert_map = getattr(layer.dispatcher, "local_expert_mapping", None)
            info = MarlinMoeQuantInfo(
                w13_qweight=layer.w13_weight, w2_qweight=layer.w2_weight,
                w13_scales=layer.w13_weight_scale_inv, w2_scales=layer.w2_weight_scale_inv,
                w13_g_idx_sort_indices=None, w2_g_idx_sort_indices=None, weight_bits=4,
                is_k_full=True, expert_map=expert_map,
                global_num_experts=layer.dispatcher.num_experts if expert_map is not None else -1)
            return self.runner.run(dispatch_output, info)
        if self.active == "triton":
            return self.runner.run(dispatch_output, self.get_triton_quant_info(layer))
        x = dispatch_output.hidden_states
        if not hasattr(topk_output, "topk_ids"):
            raise ValueError(
                f"{self.prefix}: the torch reference MoE needs standard top-k output, got {topk_output.format}"
            )
        cfg = self.moe_runner_config
        out = reference_moe(
            x, layer.w13_weight, layer.w13_weight_scale_inv, layer.w2_weight, layer.w2_weight_scale_inv,
            topk_output.topk_weights, topk_output.topk_ids, cfg.swiglu_limit,
            cfg.routed_scaling_factor if x.is_cuda else None)
        return StandardCombineInput(hidden_states=out)

    def get_triton_quant_info(self, layer: torch.nn.Module):
        from sglang.srt.layers.moe.moe_runner.triton import TritonMoeQuantInfo

        return TritonMoeQuantInfo(
            w13_weight=layer.w13_weight, w2_weight=layer.w2_weight, use_int4_w4a16=True,
            w13_scale=layer.w13_weight_scale_inv, w2_scale=layer.w2_weight_scale_inv,
            block_shape=[0, INT4_GROUP])
