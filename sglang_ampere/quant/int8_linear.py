"""INT8 weight-only (W8A16) linear method for dsv4_int dense layers.

Contract (both variants): ``y = x @ W^T (+ bias)`` with ``W[n, k] = q[n, k] * s(n, k)`` where

* block:   ``q`` = int8 ``[N, K]`` in -127..127, ``s(n, k) = scale[n // 128, k // 128]`` (BF16);
* channel: ``q`` = uint8 ``[N, K]`` minus 128,     ``s(n, k) = scale[n]`` (BF16).

Parameters (names SGLang's DeepSeek-V4 loader produces from ``X.weight`` / ``X.scale``):
``weight`` (:class:`ModelWeightParameter`) and ``weight_scale_inv`` (BF16
:class:`BlockQuantScaleParameter` ``[ceil(N/128), ceil(K/128)]`` or
:class:`ChannelQuantScaleParameter` ``[N]``). Tensor parallelism and the shard offsets of
merged layers (``gate_up_proj``, ``wqkv_a``) are SGLang's v2 loader's job; block scales are
sharded by block rows/cols, which is exact when every per-rank shard is a multiple of 128.

Execution:

* CUDA sm_80+: SGLang's Marlin W8A16 GEMM (``uint8b128``; group 128 from block scales, or
  per-channel). The weight is repacked at load and the int8 original dropped; no BF16 copy.
* elsewhere: torch reference -- dequantize to float32, round to BF16, ``F.linear`` -- which
  is also what :mod:`sglang_ampere.quant.selfchecks` compares Marlin against. It lives in
  :mod:`.int8_reference` (no SGLang import) and is re-exported here.
"""

from __future__ import annotations

import logging
from typing import Optional

import torch
from sglang.srt.layers.quantization.base_config import LinearMethodBase
from torch.nn import Parameter

from ..formats.blocks import block_scale_shape
from ..formats.constants import BLOCK
from . import marlin_layout
from .int8_reference import dequantize, reference_linear

__all__ = ["Dsv4Int8LinearMethod", "dequantize", "marlin_usable", "reference_linear"]

logger = logging.getLogger("sglang_ampere")


def marlin_usable(device: torch.device) -> bool:
    return device.type == "cuda" and torch.cuda.get_device_capability(device) >= (8, 0)


class Dsv4Int8LinearMethod(LinearMethodBase):
    """W8A16 for one dsv4_int dense layer (the class name is in SGLang's v2-loader list)."""

    def __init__(self, quant_config, prefix: str = ""):
        self.quant_config = quant_config
        self.strategy = quant_config.strategy
        self.prefix = prefix

    def create_weights(self, layer: torch.nn.Module, input_size_per_partition: int,
                       output_partition_sizes: list[int], input_size: int, output_size: int,
                       params_dtype: torch.dtype, **extra_weight_attrs):
        from sglang.srt.layers.parameter import (
            BlockQuantScaleParameter,
            ChannelQuantScaleParameter,
            ModelWeightParameter,
        )

        weight_loader = extra_weight_attrs["weight_loader"]
        n = sum(output_partition_sizes)
        k = input_size_per_partition
        if self.strategy == "block":
            bad = [s for s in output_partition_sizes if s % BLOCK]
            if len(output_partition_sizes) > 1 and bad or (n != output_size and n % BLOCK) \
                    or (k != input_size and k % BLOCK):
                raise ValueError(
                    f"{self.prefix}: per-rank shard [{n}, {k}] (parts {output_partition_sizes}) is not "
                    f"a whole number of {BLOCK}x{BLOCK} INT8 blocks; use a smaller tensor-parallel size"
                )
        layer.register_parameter("weight", ModelWeightParameter(
            data=torch.empty(n, k, dtype=torch.int8 if self.strategy == "block" else torch.uint8),
            input_dim=1, output_dim=0, weight_loader=weight_loader))
        if self.strategy == "block":
            scale = BlockQuantScaleParameter(
                data=torch.empty(*block_scale_shape(n, k), dtype=torch.bfloat16),
                input_dim=1, output_dim=0, weight_loader=weight_loader)
        else:
            scale = ChannelQuantScaleParameter(
                data=torch.empty(n, dtype=torch.bfloat16), output_dim=0, weight_loader=weight_loader)
        layer.register_parameter("weight_scale_inv", scale)
        layer.dsv4_int8_shape = (n, k)
        layer.dsv4_int8_marlin = False

    def process_weights_after_loading(self, layer: torch.nn.Module) -> None:
        # Plain Parameters from here on (the loader's parameter classes are load-time only).
        layer.weight = Parameter(layer.weight.data, requires_grad=False)
        layer.weight_scale_inv = Parameter(layer.weight_scale_inv.data, requires_grad=False)
        if not marlin_usable(layer.weight.device):
            return
        self._prepare_marlin(layer)

    def _prepare_marlin(self, layer: torch.nn.Module) -> None:
        from sglang.kernels.ops.quantization.gptq_marlin_repack import gptq_marlin_repack
        from sglang.srt.layers.quantization.marlin_utils import (
            marlin_make_empty_g_idx,
            marlin_make_workspace,
            marlin_permute_scales,
            verify_marlin_supports_shape,
        )

        n, k = layer.dsv4_int8_shape
        group = BLOCK if self.strategy == "block" else -1
        verify_marlin_supports_shape(n, k, k, group if group > 0 else k)
        dev = layer.weight.device
        if self.strategy == "block":
            gptq = marlin_layout.int8_block_to_gptq(layer.weight.data, self.prefix)
            scales = marlin_layout.block_scales_to_groups(layer.weight_scale_inv.data, n, k, self.prefix)
        else:
            gptq = marlin_layout.uint8_channel_to_gptq(layer.weight.data, self.prefix)
            scales = marlin_layout.channel_scales_to_groups(layer.weight_scale_inv.data, n, self.prefix)
        perm = torch.empty(0, dtype=torch.int32, device=dev)
        qweight = gptq_marlin_repack(gptq, perm, size_k=k, size_n=n, num_bits=8)
        del gptq
        layer.weight = Parameter(qweight, requires_grad=False)      # the int8 original is released
        layer.weight_scale_inv = Parameter(
            marlin_permute_scales(scales, size_k=k, size_n=n, group_size=group), requires_grad=False)
        layer.marlin_workspace = marlin_make_workspace(dev)
        layer.marlin_empty = marlin_make_empty_g_idx(dev)
        layer.dsv4_int8_marlin = True

    def apply(self, layer: torch.nn.Module, x: torch.Tensor, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
        if layer.dsv4_int8_marlin:
            from sglang.srt.layers.quantization.marlin_utils import apply_gptq_marlin_linear
            from sglang.srt.layers.quantization.utils import scalar_types

            n, k = layer.dsv4_int8_shape
            empty = layer.marlin_empty
            return apply_gptq_marlin_linear(
                input=x, weight=layer.weight, weight_scale=layer.weight_scale_inv,
                weight_zp=empty, g_idx=empty, g_idx_sort_indices=empty,
                workspace=layer.marlin_workspace, wtype=scalar_types.uint8b128,
                output_size_per_partition=n, input_size_per_partition=k,
                is_k_full=True, bias=bias)
        if x.is_cuda:
            raise RuntimeError(
                f"{self.prefix}: dsv4_int INT8 layers need CUDA sm_80+ for Marlin W8A16 "
                f"(this GPU is sm_{''.join(map(str, torch.cuda.get_device_capability(x.device)))})")
        return reference_linear(x, layer.weight, layer.weight_scale_inv, self.strategy, bias)
