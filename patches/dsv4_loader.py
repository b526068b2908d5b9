"""DeepSeek-V4 weight preparation for dsv4_int checkpoints (target model, MTP and DSpark drafts).

Target:   ``sglang.srt.models.deepseek_v4._prepare_deepseek_v4_weights(weights, quant_config)``
          and ``sglang.srt.models.deepseek_v4_dspark.DeepseekV4ForCausalLMDSpark.load_weights``
Hook:     AROUND (both)
Why:      ``DeepseekV4ForCausalLM.load_weights`` pipes the checkpoint stream through this
          function whenever the FP8 ``wo_a`` GEMM is off (always, for a non-Fp8 config). It
          pairs ``*.wo_a.weight`` with ``*.wo_a.scale`` and calls ``_dequant_fp8``, which
          asserts ``float8_e4m3fn`` -- an INT8 ``wo_a`` crashes there. ``wo_a`` is read by a
          grouped einsum (``[G, R, D]``), never through a linear method, so SGLang builds it
          as a BF16 parameter: for dsv4_int we dequantize it to BF16 here (block: int8 x
          128x128 BF16 scales; channel: uint8b128 x per-row BF16 scale) and drop its scale.
          The same pass refuses any other INT8 tensor whose layer SGLang builds without the
          quant config (compressor, indexer ``weights_proj``, ...): the default loader would
          copy raw integers into a BF16 parameter without a word.
          Any other quant config (native FP8, quark, expert_pack, BF16) goes to the original
          function unchanged.
          The DSpark drafter of DeepSeek-V4-Flash-0731 (``DeepseekV4ForCausalLMDSpark``) does
          not go through ``_prepare_deepseek_v4_weights``: its ``load_weights`` calls
          ``_dequant_fp8_wo_a_streaming`` directly (``deepseek_v4_dspark.py`` line ~1022), which
          asserts FP8 the same way. The second hook hands it the same dsv4_int stream when the
          draft's quant config is dsv4_int (the drafter's BF16 ``wo_a`` then passes through
          SGLang's function untouched), and calls it unchanged otherwise.
          Fused ``wq_a``+``wkv`` (``SGLANG_OPT_FUSE_WQA_WKV=1``, SGLang's default) works with
          dsv4_int as is: the loader concatenates the weights and the scales along the output
          rows, which is exact for both variants (1024 and 512 rows are whole 128-row blocks;
          channel scales are per row). A checkpoint whose ``wq_a`` and ``wkv`` differ in
          dtype is refused by ``Dsv4IntConfig`` with a message naming that variable.
SGLang:   written for 0.5.23 (``deepseek_v4.py`` lines ~5251-5290 and 5671-5776,
          ``deepseek_v4_dspark.py`` lines ~1018-1098).
"""

from __future__ import annotations

import logging
import re
from typing import Iterable, Iterator, Tuple

import torch

from . import Hook

logger = logging.getLogger("sglang_ampere")

TARGET = "sglang.srt.models.deepseek_v4._prepare_deepseek_v4_weights"
DSPARK_TARGET = "sglang.srt.models.deepseek_v4_dspark.DeepseekV4ForCausalLMDSpark.load_weights"

#: Native module names SGLang's DeepSeek-V4 builds with the quant config (so an INT8 tensor
#: there gets an INT8 parameter), plus ``wo_a`` (dequantized here) and the routed experts;
#: ``main_proj`` is the DSpark drafter's target-hidden projection (a quantized ReplicatedLinear).
_INT8_OK = re.compile(
    r"(^|\.)(attn\.(wq_a|wkv|wq_b|wo_a|wo_b|indexer\.wq_b)|ffn\.shared_experts\.w[123]"
    r"|ffn\.experts\.\d+\.w[123]|e_proj|h_proj|main_proj)$"
)


def _dequant_wo_a(name: str, weight: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    from sglang_ampere.formats.int8 import int8_block_dequantize, uint8_channel_dequantize

    if weight.dtype == torch.int8:
        return int8_block_dequantize(weight, scale, name).to(torch.bfloat16)
    if weight.dtype == torch.uint8:
        return uint8_channel_dequantize(weight, scale, name).to(torch.bfloat16)
    raise ValueError(
        f"{name}: dsv4_int wo_a must be int8 (block) or uint8 (channel), got {weight.dtype}; "
        "re-convert the checkpoint with `sglang-ampere convert`"
    )


def dsv4_int_weight_stream(weights: Iterable[Tuple[str, torch.Tensor]]) -> Iterator[Tuple[str, torch.Tensor]]:
    """Native-name stream -> the same stream with ``wo_a`` in BF16 and no ``wo_a.scale``."""
    pending: dict[str, dict[str, torch.Tensor]] = {}
    for name, tensor in weights:
        if name.endswith(".wo_a.weight") or name.endswith(".wo_a.scale"):
            prefix, _, kind = name.rpartition(".")
            bucket = pending.setdefault(prefix, {})
            bucket[kind] = tensor
            if len(bucket) == 2:
                pending.pop(prefix)
                if bucket["weight"].dtype in (torch.int8, torch.uint8):
                    yield f"{prefix}.weight", _dequant_wo_a(f"{prefix}.weight", bucket["weight"], bucket["scale"])
                else:
                    raise ValueError(
                        f"{prefix}.weight is {bucket['weight'].dtype} with a scale; a dsv4_int "
                        "checkpoint stores wo_a as INT8 (or BF16 without a scale)")
            continue
        if tensor.dtype in (torch.int8, torch.uint8) and name.endswith(".weight"):
            module = name[: -len(".weight")]
            if not _INT8_OK.search(module):
                raise ValueError(
                    f"{name} is {tensor.dtype} in the checkpoint, but SGLang's DeepSeek-V4 builds "
                    "that layer in BF16 without a quantization method; loading it would copy raw "
                    "integers. Keep this tensor BF16 when converting (`sglang-ampere convert`).")
        yield name, tensor
    for prefix, bucket in pending.items():
        if "scale" in bucket:
            raise ValueError(f"{prefix}.scale has no {prefix}.weight in the checkpoint")
        if bucket["weight"].dtype in (torch.int8, torch.uint8):
            raise ValueError(f"{prefix}.weight is INT8 but {prefix}.scale is missing from the checkpoint")
        yield f"{prefix}.weight", bucket["weight"]


def _is_dsv4_int(quant_config) -> bool:
    return quant_config is not None and quant_config.get_name() == "dsv4_int"


def prepare_weights(original, weights, quant_config):
    """AROUND hook: dsv4_int gets :func:`dsv4_int_weight_stream`, everything else the original."""
    if _is_dsv4_int(quant_config):
        return dsv4_int_weight_stream(weights)
    return original(weights, quant_config)


def dspark_load_weights(original, self, weights, *args, **kwargs):
    """AROUND hook on the DSpark draft's ``load_weights``: the dsv4_int stream first, if dsv4_int."""
    if _is_dsv4_int(getattr(self, "quant_config", None)):
        weights = dsv4_int_weight_stream(weights)
    return original(self, weights, *args, **kwargs)


def hooks() -> list[Hook]:
    return [Hook(TARGET, prepare_weights, "AROUND",
                 "dequantize dsv4_int INT8 wo_a to BF16 (SGLang's path asserts FP8)"),
            Hook(DSPARK_TARGET, dspark_load_weights, "AROUND",
                 "the same for the V4-Flash-0731 DSpark draft, whose load_weights skips that path")]
