"""The ``quantization_config`` schema of dsv4_int checkpoints, parsed strictly.

This is the schema of the already-published dsv4_int conversions of DeepSeek-V4-Flash
(reference: dsv4-flash-format.md section 7) and of what ``sglang-ampere convert`` writes::

    {"quant_method": "dsv4_int", "format": "int_packed",
     "config_groups": {
        "experts_w4a16": {"weights": {"num_bits": 4, "type": "int", "format": "int4",
                                      "symmetric": true, "group_size": 32,
                                      "strategy": "group", "scale_mode": "mse"},
                          "input_activations": {"num_bits": 16, "type": "float"},
                          "targets": ["*.ffn.experts.*.w1", ...]},
        "linears_w8a16": {"weights": {"num_bits": 8, "type": "int", "symmetric": true,
                                      "strategy": "block", "block_size": [128, 128]},
                          "input_activations": {"num_bits": 16, "type": "float"},
                          "targets": ["*.attn.wq_a", ...]}},
     "ignore": ["embed", "head", ...]}

Every key is checked: a missing or unknown key, or a value this package cannot serve, is a
:class:`SchemaError` whose message names the key path. The converter writes the schema with
:func:`make_quantization_config`, the audit and ``Dsv4IntConfig`` read it with
:func:`parse_quantization_config`: one place for both directions. Pure Python; no torch, no
SGLang.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import Any, Mapping

from . import QUANT_METHOD
from .formats.constants import BLOCK, INT4_GROUP

#: Keys SGLang adds to the dict it hands to ``from_config`` (weight_utils.get_quant_config).
SGLANG_INJECTED_KEYS = frozenset({"packed_modules_mapping", "hf_config", "requantization_method"})
#: Optional key SGLang's ModelConfig reads from quantization_config: when present it skips the
#: DeepSeek-V4 routed-expert dtype probe (which calls I8 experts "MXFP4"); must not be "mxfp4".
ROUTED_EXPERTS_KEY = "routed_experts_quant_method"

EXPERTS_GROUP = "experts_w4a16"
LINEARS_GROUP = "linears_w8a16"
STRATEGIES = ("block", "channel")

#: The published checkpoints' target and ignore lists (reference section 7), written as they are.
#: The dense list is declarative and broader than what is INT8 (the indexer compressor stays
#: BF16): loaders decide from the tensors' real dtypes.
EXPERT_TARGETS = ("*.ffn.experts.*.w1", "*.ffn.experts.*.w2", "*.ffn.experts.*.w3")
DENSE_TARGETS = ("*.attn.wq_a", "*.attn.wq_b", "*.attn.wkv", "*.attn.wo_a", "*.attn.wo_b",
                 "*.attn.indexer.wq_b", "*.attn.indexer.compressor.wkv",
                 "*.attn.indexer.compressor.wgate", "*.ffn.shared_experts.w1",
                 "*.ffn.shared_experts.w2", "*.ffn.shared_experts.w3",
                 "mtp.*.e_proj", "mtp.*.h_proj")
#: Added to the dense targets for a V4-Flash-0731 checkpoint: its DSpark drafter's one dense
#: layer outside the block patterns above (docs/dsv4-flash-0731.md).
DSPARK_DENSE_TARGETS = ("mtp.*.main_proj",)
IGNORE = ("embed", "head", "norm", "lm_head", "*norm.weight", "attn.attn_sink",
          "*.gate.*", "hc_*", "*.hc_attn_*", "*.hc_ffn_*")
#: What ``convert`` writes under ROUTED_EXPERTS_KEY: anything but "mxfp4" stops SGLang's
#: MXFP4 auto-detection of I8 expert bytes.
ROUTED_EXPERTS_INT4 = "int4"


def make_quantization_config(dense_strategy: str, scale_mode: str, extra_ignore=(), dspark: bool = False) -> dict:
    """The quantization_config a dsv4_int checkpoint carries (the published schema, plus
    ROUTED_EXPERTS_KEY, which SGLang 0.5.23 reads; plus DSPARK_DENSE_TARGETS if ``dspark``)."""
    if dense_strategy not in STRATEGIES:
        raise ValueError(f"dense strategy must be one of {STRATEGIES}, got {dense_strategy!r}")
    dense_w = {"num_bits": 8, "type": "int", "symmetric": True, "strategy": dense_strategy}
    if dense_strategy == "block":
        dense_w["block_size"] = [BLOCK, BLOCK]
    return {
        "quant_method": QUANT_METHOD,
        "format": "int_packed",
        "config_groups": {
            EXPERTS_GROUP: {
                "weights": {"num_bits": 4, "type": "int", "format": "int4", "symmetric": True,
                            "group_size": INT4_GROUP, "strategy": "group", "scale_mode": scale_mode},
                "input_activations": {"num_bits": 16, "type": "float"},
                "targets": list(EXPERT_TARGETS),
            },
            LINEARS_GROUP: {
                "weights": dense_w,
                "input_activations": {"num_bits": 16, "type": "float"},
                "targets": list(DENSE_TARGETS) + (list(DSPARK_DENSE_TARGETS) if dspark else []),
            },
        },
        "ignore": list(IGNORE) + [p for p in extra_ignore if p not in IGNORE],
        ROUTED_EXPERTS_KEY: ROUTED_EXPERTS_INT4,
    }


class SchemaError(ValueError):
    """The checkpoint's quantization_config does not match the dsv4_int schema."""

    def __init__(self, key: str, problem: str):
        self.key = key
        super().__init__(
            f"dsv4_int quantization_config: key '{key}': {problem}. "
            "Fix config.json of the checkpoint (or re-run `sglang-ampere convert`)."
        )


@dataclass(frozen=True)
class Dsv4IntSchema:
    """What the parsed quantization_config says."""

    dense_strategy: str                  # "block" | "channel"
    dense_block_size: tuple[int, int] | None
    dense_targets: tuple[str, ...]
    expert_group_size: int
    expert_scale_mode: str
    expert_targets: tuple[str, ...]
    ignore: tuple[str, ...]

    def is_dense_target(self, native_module: str) -> bool:
        """Whether a native module name (e.g. ``layers.3.attn.wq_a``) is listed as INT8."""
        return _matches(native_module, self.dense_targets)

    def is_expert_target(self, native_module: str) -> bool:
        return _matches(native_module, self.expert_targets)

    def is_ignored(self, native_module: str) -> bool:
        return _matches(native_module, self.ignore)


def _matches(name: str, patterns: tuple[str, ...]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) or name == p for p in patterns)


def _exact_keys(obj: Any, path: str, required: set[str], optional: set[str] = frozenset()) -> Mapping:
    if not isinstance(obj, Mapping):
        raise SchemaError(path, f"must be an object, got {type(obj).__name__}")
    for key in sorted(required):
        if key not in obj:
            raise SchemaError(f"{path}.{key}" if path else key, "is missing")
    for key in obj:
        if key not in required and key not in optional:
            raise SchemaError(f"{path}.{key}" if path else str(key), "is not a dsv4_int key (unknown)")
    return obj


def _expect(obj: Mapping, key: str, path: str, want) -> None:
    value = obj[key]
    ok = value in want if isinstance(want, tuple) else (value == want and type(value) is type(want))
    if not ok:
        raise SchemaError(f"{path}.{key}", f"is {value!r}; this package serves only {want!r}")


def _targets(obj: Mapping, path: str) -> tuple[str, ...]:
    targets = obj["targets"]
    if not isinstance(targets, list) or not targets or not all(isinstance(t, str) and t for t in targets):
        raise SchemaError(f"{path}.targets", "must be a non-empty list of name patterns")
    return tuple(targets)


def _activations(group: Mapping, path: str) -> None:
    act = _exact_keys(group["input_activations"], f"{path}.input_activations", {"num_bits", "type"})
    _expect(act, "num_bits", f"{path}.input_activations", 16)
    _expect(act, "type", f"{path}.input_activations", "float")


def parse_quantization_config(config: Mapping[str, Any]) -> Dsv4IntSchema:
    """Validate ``quantization_config`` (plus SGLang's injected keys) and return the schema."""
    top = _exact_keys(config, "", {"quant_method", "format", "config_groups", "ignore"},
                      set(SGLANG_INJECTED_KEYS) | {ROUTED_EXPERTS_KEY})
    if top.get(ROUTED_EXPERTS_KEY, "int4") in ("mxfp4", None) or not isinstance(top.get(ROUTED_EXPERTS_KEY, ""), str):
        raise SchemaError(
            ROUTED_EXPERTS_KEY, "dsv4_int routed experts are INT4 (uint4b8); use \"int4\" or leave the key out"
        )
    if top["quant_method"] != QUANT_METHOD:
        raise SchemaError("quant_method", f"is {top['quant_method']!r}, expected {QUANT_METHOD!r}")
    _expect(top, "format", "", "int_packed")
    groups = _exact_keys(top["config_groups"], "config_groups", {EXPERTS_GROUP, LINEARS_GROUP})

    # --- routed experts: INT4 uint4b8, group 32, BF16 scales --------------------------
    epath = f"config_groups.{EXPERTS_GROUP}"
    eg = _exact_keys(groups[EXPERTS_GROUP], epath, {"weights", "input_activations", "targets"})
    ew = _exact_keys(eg["weights"], f"{epath}.weights",
                     {"num_bits", "type", "format", "symmetric", "group_size", "strategy", "scale_mode"})
    _expect(ew, "num_bits", f"{epath}.weights", 4)
    _expect(ew, "type", f"{epath}.weights", "int")
    _expect(ew, "format", f"{epath}.weights", "int4")
    _expect(ew, "symmetric", f"{epath}.weights", True)
    _expect(ew, "group_size", f"{epath}.weights", INT4_GROUP)
    _expect(ew, "strategy", f"{epath}.weights", "group")
    if not isinstance(ew["scale_mode"], str) or not ew["scale_mode"]:
        raise SchemaError(f"{epath}.weights.scale_mode", "must be a non-empty string (e.g. 'mse' or 'absmax7')")
    _activations(eg, epath)

    # --- dense linears: INT8, block (int8 + 128x128 BF16) or channel (uint8b128 + BF16 row)
    lpath = f"config_groups.{LINEARS_GROUP}"
    lg = _exact_keys(groups[LINEARS_GROUP], lpath, {"weights", "input_activations", "targets"})
    strategy = lg["weights"].get("strategy") if isinstance(lg["weights"], Mapping) else None
    if strategy is not None and strategy not in STRATEGIES:
        raise SchemaError(f"{lpath}.weights.strategy", f"is {strategy!r}; this package serves only {STRATEGIES!r}")
    base = {"num_bits", "type", "symmetric", "strategy"}
    lw = _exact_keys(lg["weights"], f"{lpath}.weights", base | ({"block_size"} if strategy == "block" else set()))
    _expect(lw, "num_bits", f"{lpath}.weights", 8)
    _expect(lw, "type", f"{lpath}.weights", "int")
    _expect(lw, "symmetric", f"{lpath}.weights", True)
    _expect(lw, "strategy", f"{lpath}.weights", STRATEGIES)
    block_size = None
    if strategy == "block":
        if list(lw["block_size"]) != [BLOCK, BLOCK]:
            raise SchemaError(
                f"{lpath}.weights.block_size", f"is {lw['block_size']!r}; only [{BLOCK}, {BLOCK}] is served"
            )
        block_size = (BLOCK, BLOCK)
    _activations(lg, lpath)

    ignore = top["ignore"]
    if not isinstance(ignore, list) or not all(isinstance(p, str) for p in ignore):
        raise SchemaError("ignore", "must be a list of name patterns")

    return Dsv4IntSchema(
        dense_strategy=strategy,
        dense_block_size=block_size,
        dense_targets=_targets(lg, lpath),
        expert_group_size=INT4_GROUP,
        expert_scale_mode=ew["scale_mode"],
        expert_targets=_targets(eg, epath),
        ignore=tuple(ignore),
    )
