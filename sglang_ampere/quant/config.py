"""``Dsv4IntConfig``: SGLang's QuantizationConfig for ``quant_method = "dsv4_int"``.

One config class decides per layer (like SGLang's ``blockwise_int8.py`` / ``moe_wna16.py``):

* routed experts (``FusedMoE``) -> :class:`~sglang_ampere.quant.int4_moe.Dsv4Int4MoEMethod`;
* a linear layer whose checkpoint tensors are INT8 -> :class:`~sglang_ampere.quant.int8_linear.Dsv4Int8LinearMethod`
  (fused/merged layers SGLang builds from several checkpoint tensors -- ``wqkv_a`` from
  ``wq_a``+``wkv``, ``gate_up_proj`` from ``w1``+``w3`` -- are INT8 only if all parts are);
* any other linear -> SGLang's ``UnquantizedLinearMethod`` (BF16);
* attention / embeddings / LM head -> ``None``.

The published target list is declarative and broader than what is INT8 (e.g. the indexer
compressor tensors are listed but stay BF16), so the decision is made from the real tensor
dtypes in the checkpoint's safetensors headers (read once, header bytes only), checked
against the targets: an INT8 tensor that is not a target, a target whose scale is missing
or of the wrong shape/dtype, or a fused pair with mixed dtypes is an error naming the tensor.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Mapping, Optional

import torch
from sglang.srt.layers.quantization.base_config import QuantizationConfig, QuantizeMethodBase

from .. import QUANT_METHOD, rules
from ..formats.constants import INT4_GROUP
from ..safetensors_io import CheckpointError, list_shards, read_header
from ..schema import Dsv4IntSchema, parse_quantization_config

logger = logging.getLogger("sglang_ampere")

#: (shape, dtype) per checkpoint tensor name.
TensorIndex = Mapping[str, tuple[str, tuple[int, ...]]]


class Dsv4IntError(ValueError):
    """The checkpoint and the dsv4_int rules disagree; the message says what to do."""


# --- checkpoint headers ----------------------------------------------------------------------

def read_safetensors_index(model_dir: str) -> dict[str, tuple[str, tuple[int, ...]]]:
    """dtype and shape of every tensor in a local checkpoint, from the safetensors headers
    only (:func:`~sglang_ampere.safetensors_io.read_header`; no tensor data is read): the shards
    of ``model.safetensors.index.json``, or every ``*.safetensors`` file without one."""
    index_file = os.path.join(model_dir, "model.safetensors.index.json")
    if os.path.exists(index_file):
        with open(index_file) as f:
            shards = [Path(model_dir, s) for s in sorted(set(json.load(f)["weight_map"].values()))]
    else:
        shards = list_shards(Path(model_dir))
    if not shards:
        raise Dsv4IntError(f"no *.safetensors files in {model_dir}; dsv4_int needs the checkpoint on local disk")
    out: dict[str, tuple[str, tuple[int, ...]]] = {}
    for shard in shards:
        try:
            tensors = read_header(shard).tensors
        except CheckpointError as e:
            raise Dsv4IntError(str(e)) from e
        out.update((name, (info.dtype, info.shape)) for name, info in tensors.items())
    return out


def checkpoint_dir_of(hf_config: Any) -> Optional[str]:
    """The local directory holding the checkpoint SGLang is loading, if it can be found."""
    path = getattr(hf_config, "_name_or_path", None) or getattr(hf_config, "name_or_path", None)
    if not path:
        return None
    if os.path.isdir(path):
        return path
    try:
        from sglang.srt.utils import find_local_repo_dir

        local = find_local_repo_dir(path)
    except Exception:  # a missing cache just means "not local"
        local = None
    return local if local and os.path.isdir(local) else None


# --- SGLang module prefix -> native checkpoint module names ------------------------------------

def native_modules(prefix: str) -> list[str]:
    """Native (DeepSeek) module names whose tensors SGLang loads into the layer at ``prefix``.

    ``model.layers.3.self_attn.wqkv_a`` -> ``[layers.3.attn.wq_a, layers.3.attn.wkv]``;
    ``model.layers.3.mlp.shared_experts.gate_up_proj`` -> ``[... .ffn.shared_experts.w1, ... .w3]``;
    the MTP draft (``DeepseekV4ForCausalLMNextN``) builds ``mtp.0`` as ``model.decoder`` with
    ``model.e_proj`` / ``model.h_proj`` beside it; the V4-Flash-0731 DSpark draft
    (``DeepseekV4ForCausalLMDSpark``) builds block ``mtp.N`` as ``stages.N`` (``main_proj``
    included).
    """
    p = prefix
    if p.startswith("stages."):
        p = "mtp." + p[len("stages."):]
    elif p.startswith("model.decoder."):
        p = "mtp.0." + p[len("model.decoder."):]
    elif p in ("model.e_proj", "model.h_proj"):
        p = "mtp.0." + p[len("model."):]
    elif p.startswith("model.layers."):
        p = p[len("model."):]
    p = p.replace(".self_attn.", ".attn.").replace(".mlp.", ".ffn.")
    head, _, last = p.rpartition(".")
    if last == "wqkv_a":
        return [f"{head}.wq_a", f"{head}.wkv"]
    if last == "gate_up_proj":
        return [f"{head}.w1", f"{head}.w3"]
    if last == "down_proj":
        return [f"{head}.w2"]
    if last == "wkv_gate":
        return [f"{head}.wkv", f"{head}.wgate"]
    return [p]


# --- the config -------------------------------------------------------------------------------

class Dsv4IntConfig(QuantizationConfig):
    """dsv4_int: INT4 W4A16 routed experts, INT8 W8A16 dense linears, BF16 activations."""

    def __init__(self, schema: Dsv4IntSchema, tensors: Optional[TensorIndex], checkpoint_dir: Optional[str] = None):
        super().__init__()
        self.schema = schema
        self.tensors = tensors
        self.checkpoint_dir = checkpoint_dir
        self.strategy = schema.dense_strategy
        # Read by SGLang's merged/QKV linear loaders to shard BlockQuantScaleParameter.
        self.weight_block_size = list(schema.dense_block_size) if schema.dense_block_size else None
        self.int8_layers: dict[str, list[str]] = {}
        _ensure_weight_loader_v2()
        _refuse_if_hooks_failed()

    # -- QuantizationConfig interface --
    def get_name(self) -> str:
        return QUANT_METHOD

    def get_supported_act_dtypes(self) -> list[torch.dtype]:
        return [torch.bfloat16]

    @classmethod
    def get_min_capability(cls) -> int:
        return 80

    @staticmethod
    def get_config_filenames() -> list[str]:
        return []

    def get_scaled_act_names(self) -> list[str]:
        return []

    def can_fuse_shared_expert(self) -> bool:
        # The shared expert is INT8 (dense method), the routed experts INT4: never fuse them.
        return False

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "Dsv4IntConfig":
        schema = parse_quantization_config(config)
        hf_config = config.get("hf_config")
        model_dir = checkpoint_dir_of(hf_config) if hf_config is not None else None
        if model_dir is None:
            raise Dsv4IntError(
                "dsv4_int decides INT8 vs BF16 per layer from the checkpoint's safetensors "
                "headers, but the checkpoint is not on local disk "
                f"(model path {getattr(hf_config, '_name_or_path', None)!r}). Download it first "
                "(e.g. `huggingface-cli download REPO --local-dir DIR`) and pass --model-path DIR."
            )
        cfg = cls(schema, read_safetensors_index(model_dir), model_dir)
        packed = config.get("packed_modules_mapping")
        if packed:
            cfg.update_packed_modules_mapping(packed)
        logger.info("dsv4_int: %s dense INT8, INT4 experts (group %d), checkpoint %s",
                    schema.dense_strategy, schema.expert_group_size, model_dir)
        return cfg

    def get_quant_method(self, layer: torch.nn.Module, prefix: str) -> Optional[QuantizeMethodBase]:
        from sglang.srt.layers.linear import LinearBase
        from sglang.srt.layers.moe.fused_moe_triton.layer import FusedMoE
        from sglang.srt.layers.quantization.unquant import UnquantizedLinearMethod

        if isinstance(layer, FusedMoE):
            from .int4_moe import Dsv4Int4MoEMethod

            self.check_experts(prefix)
            return Dsv4Int4MoEMethod(self, prefix)
        if isinstance(layer, LinearBase):
            if self.linear_is_int8(prefix):
                from .int8_linear import Dsv4Int8LinearMethod

                return Dsv4Int8LinearMethod(self, prefix)
            return UnquantizedLinearMethod()
        return None

    # -- per-layer decisions --
    def _lookup(self, name: str) -> Optional[tuple[str, tuple[int, ...]]]:
        if self.tensors is None:
            raise Dsv4IntError("Dsv4IntConfig has no tensor index; build it with from_config() or pass `tensors`")
        return self.tensors.get(name)

    def linear_is_int8(self, prefix: str) -> bool:
        """INT8 iff the layer's checkpoint tensors are INT8 (all of them, for fused layers)."""
        parts = native_modules(prefix)
        kinds = {}
        for module in parts:
            meta = self._lookup(f"{module}.weight")
            if meta is None:
                continue
            dtype, shape = meta
            if dtype in rules.DENSE_INT8_DTYPES.values():
                self._check_int8_tensor(module, dtype, shape)
                kinds[module] = "int8"
            elif dtype in rules.FLOAT_DTYPES:
                kinds[module] = "bf16"
            else:
                raise Dsv4IntError(
                    f"{module}.weight has dtype {dtype}; a dsv4_int dense layer must be INT8 "
                    f"({rules.DENSE_INT8_DTYPES[self.strategy]}) or BF16. Re-convert the checkpoint with "
                    "`sglang-ampere convert`."
                )
        if len(set(kinds.values())) > 1:
            hint = (" Run with SGLANG_OPT_FUSE_WQA_WKV=0 (the sm80/sm86 presets of "
                    "`sglang-ampere launch` set it) so they stay separate layers."
                    if prefix.endswith("wqkv_a") else "")
            raise Dsv4IntError(
                f"SGLang fuses {parts} into one layer ({prefix}), but their dtypes differ: {kinds}.{hint}"
            )
        is_int8 = bool(kinds) and next(iter(kinds.values())) == "int8"
        if is_int8 and self.strategy == "block" and len(kinds) > 1:
            ragged = {m: self._lookup(f"{m}.weight")[1][0] for m in kinds if self._lookup(f"{m}.weight")[1][0] % 128}
            if ragged:
                raise Dsv4IntError(
                    f"SGLang fuses {parts} into one layer ({prefix}), but {ragged} rows are not whole "
                    "128-row scale blocks, so the concatenated block scales would not line up."
                    + (" Run with SGLANG_OPT_FUSE_WQA_WKV=0." if prefix.endswith("wqkv_a") else ""))
        if is_int8:
            self.int8_layers[prefix] = parts
        return is_int8

    def _check_int8_tensor(self, module: str, dtype: str, shape: tuple[int, ...]) -> None:
        """The weight and scale against :mod:`sglang_ampere.rules` and the schema's targets."""
        problem = rules.dense_int8_weight_problem(self.strategy, dtype, shape)
        if problem is None and not self.schema.is_dense_target(module):
            problem = ("is INT8 but no pattern in "
                       "quantization_config.config_groups.linears_w8a16.targets matches it")
        if problem:
            raise Dsv4IntError(f"{module}.weight {problem}")
        scale = self._lookup(f"{module}.scale")
        if scale is None:
            raise Dsv4IntError(f"{module}.scale is missing; an INT8 weight needs its {rules.SCALE_DTYPE} scale")
        problem = rules.dense_int8_scale_problem(self.strategy, shape, scale)
        if problem:
            raise Dsv4IntError(f"{module}.{problem}")

    def check_experts(self, prefix: str) -> None:
        """Routed experts must be uint4b8 (I8 storage) with BF16 group-32 scales."""
        module = native_modules(prefix)[0]          # e.g. layers.3.ffn.experts
        for w in ("w1", "w2", "w3"):
            name = f"{module}.0.{w}"
            meta = self._lookup(f"{name}.weight")
            if meta is None:
                continue                              # e.g. a layer on another PP rank's shard list
            if not self.schema.is_expert_target(name):
                raise Dsv4IntError(f"{name} is not matched by quantization_config.config_groups.experts_w4a16.targets")
            scale = self._lookup(f"{name}.scale")
            if rules.expert_problem(meta[0], meta[1], scale):
                raise Dsv4IntError(
                    f"{name}: expected weight {rules.EXPERT_WEIGHT_DTYPE} [N, K/2] (packed uint4b8) with scale "
                    f"{rules.SCALE_DTYPE} [N, K/{INT4_GROUP}], "
                    f"got weight {meta[0]} {list(meta[1])}, scale {scale and (scale[0], list(scale[1]))}"
                )


def _ensure_weight_loader_v2() -> None:
    """SGLang picks the v2 (parameter-class) loader by the method's class name."""
    from sglang.srt.layers import linear

    if "Dsv4Int8LinearMethod" not in linear.WEIGHT_LOADER_V2_SUPPORTED:
        linear.WEIGHT_LOADER_V2_SUPPORTED.append("Dsv4Int8LinearMethod")


def _refuse_if_hooks_failed() -> None:
    """SGLang swallows plugin errors; refusing here (model load) makes a failed patch fatal."""
    from .. import hook_state

    failed = hook_state.verify_hooks()
    if failed:
        raise Dsv4IntError(
            "sglang_ampere hooks did not take effect: " + ", ".join(failed)
            + ". The model would load or run incorrectly; see the earlier sglang_ampere error in the log."
        )
