"""SGLang's MXFP4 Marlin MoE method with its SM90/SM120 gate lifted, for the Ampere path.

SGLang 0.5.23's ``Mxfp4MarlinMoEMethod.process_weights_after_loading``
(``srt/layers/quantization/mxfp4_marlin_moe.py``) raises "MXFP4 Marlin requires SM90 or SM120"
on every other card, although the work after the gate is SGLang's generic Marlin machinery:
``check_moe_marlin_supports_layer`` and ``prepare_moe_mxfp4_layer_for_marlin`` (``gptq_marlin_repack``
of the E2M1 words, ``marlin_permute_scales`` of the E8M0 scales) and, at run time, the
``moe_wna16_marlin_gemm`` kernel with ``float4_e2m1f`` weights and BF16 activations, which SGLang
compiles for the card it runs on. :class:`AmpereMxfp4MarlinMoEMethod` keeps everything of the
parent (weights, runner, ``apply``, ``fuse_routed_scaling_factor_in_topk = True``) and runs the
same post-loading steps without the gate. ``patches/dsv4_native.py`` hands it out in place of the
parent on the Ampere path only.

Without CUDA (CPU tests, the self-check's reference side) the layer keeps the loader layout
(:mod:`.native_moe` documents it) and ``apply`` runs :func:`~.native_moe.reference_mxfp4_moe`
with the top-k weights as given: TopK has already multiplied them by the routed scaling factor,
exactly as it does for the Marlin kernel.
"""

from __future__ import annotations

import logging

import torch
from sglang.srt.layers.quantization.mxfp4_marlin_moe import Mxfp4MarlinMoEMethod

from .native_moe import reference_mxfp4_moe

logger = logging.getLogger("sglang_ampere")

#: ``layer._dsv4_mxfp4_backend`` values this method sets (SGLang's own value is "marlin").
MARLIN, REFERENCE = "marlin", "reference"


class AmpereMxfp4MarlinMoEMethod(Mxfp4MarlinMoEMethod):
    """``Mxfp4MarlinMoEMethod`` for sm_80..sm_89 (and sm_90+ under ``SGLANG_AMPERE_TARGET=ampere``)."""

    active = None   # MARLIN or REFERENCE, decided in process_weights_after_loading

    def process_weights_after_loading(self, layer: torch.nn.Module) -> None:
        from sglang.srt.layers.quantization.marlin_utils import check_moe_marlin_supports_layer
        from sglang.srt.layers.quantization.marlin_utils_fp4 import (
            deinterleave_moe_mxfp4_w13_for_marlin,
            prepare_moe_mxfp4_layer_for_marlin,
        )

        # The FP8 base method first, as the parent does (for MXFP4 + Marlin it only views the
        # packed weights as int8).
        self._fp8.process_weights_after_loading(layer)
        if layer.w13_weight.device.type != "cuda":
            self._check_unpadded(layer)
            self.active = layer._dsv4_mxfp4_backend = REFERENCE
            return
        if not check_moe_marlin_supports_layer(layer, 32, allow_tile_padding=True):
            raise RuntimeError(
                f"{self.prefix}: the MXFP4 experts (hidden {layer.hidden_size}, per-rank intermediate "
                f"{layer.intermediate_size_per_partition}, activation {layer.moe_runner_config.activation}) do "
                "not fit SGLang's Marlin MoE (hidden % 64, intermediate % 32, gated SiLU); use a "
                "tensor-parallel size that keeps the per-rank intermediate a multiple of 32")
        if self.runner.config.gemm1_alpha is not None:
            deinterleave_moe_mxfp4_w13_for_marlin(layer)
        prepare_moe_mxfp4_layer_for_marlin(layer)
        self.active = layer._dsv4_mxfp4_backend = MARLIN

    def _check_unpadded(self, layer: torch.nn.Module) -> None:
        """The reference reads the loader layout as is; SGLang pads it when the logical sizes are
        not whole tiles (hidden to 256, intermediate to 128), which the reference does not model."""
        e, two_i, half_h = layer.w13_weight.shape
        if two_i != 2 * layer.intermediate_size_per_partition or 2 * half_h != layer.hidden_size:
            raise NotImplementedError(
                f"{self.prefix}: the torch reference of the MXFP4 MoE needs unpadded experts, but SGLang padded "
                f"[2I, H] = [{2 * layer.intermediate_size_per_partition}, {layer.hidden_size}] to "
                f"[{two_i}, {2 * half_h}]; use a hidden size that is a multiple of 256 and an intermediate "
                "size that is a multiple of 128")

    def apply(self, layer: torch.nn.Module, dispatch_output):
        if self.active != REFERENCE:
            return super().apply(layer, dispatch_output)
        from sglang.srt.layers.moe.token_dispatcher.standard import StandardCombineInput

        topk = dispatch_output.topk_output
        if not hasattr(topk, "topk_ids"):
            raise ValueError(f"{self.prefix}: the torch reference MoE needs standard top-k output, got {topk.format}")
        x = dispatch_output.hidden_states
        cfg = self.runner.config
        # routed_scaling_factor is already in topk_weights (fuse_routed_scaling_factor_in_topk, as for
        # SGLang's Marlin MXFP4). When SGLang's model itself runs without CUDA (the CPU target), its
        # DeepSeek MoE multiplies the routed output by it once more (deepseek_v2.py ~1233-1239: `if not
        # _is_cuda ...: final_hidden_states *= factor`), so there the reference divides it out and the
        # product carries the factor exactly once. (Callers outside a model, e.g. the quant checks,
        # get the method's own contract: the factor from topk_weights only.)
        from sglang_ampere import cpu_target

        rescale = (1.0 / cfg.routed_scaling_factor
                   if cfg.routed_scaling_factor and not x.is_cuda and cpu_target.active() else None)
        out = reference_mxfp4_moe(
            x, layer.w13_weight, layer.w13_weight_scale_inv, layer.w2_weight, layer.w2_weight_scale_inv,
            topk.topk_weights, topk.topk_ids, cfg.swiglu_limit, routed_scaling_factor=rescale)
        return StandardCombineInput(hidden_states=out)
