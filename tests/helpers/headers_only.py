"""Headers-only dsv4_int (and native) checkpoints for the memory-plan tests.

:func:`write_headers_only` writes the real DeepSeek-V4-Flash inventory (or any synth size) as
safetensors shards whose headers (:func:`~sglang_ampere.safetensors_io.build_header`) are complete
and exact but whose data sections are never written: each file is extended to its full size with
``truncate``, so it is sparse (a few MB on disk for the 157 GiB model) and ``read_header``'s size
checks pass.

The native -> dsv4_int dtype/shape rule is written out here, from the published schema
(reference dsv4-flash-format.md section 7), not imported from the converter, so the plan is
checked against an independent statement of what the checkpoint holds.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from sglang_ampere.inventory import DENSE, EXPERT, native_inventory
from sglang_ampere.safetensors_io import OutTensor, build_header, file_size
from sglang_ampere.schema import make_quantization_config
from sglang_ampere.synth import REAL, SynthSpec, make_config


def dsv4_int_tensors(config: dict, strategy: str = "block") -> dict[str, tuple[str, tuple[int, ...]]]:
    """name -> (dtype, shape) of a dsv4_int checkpoint with this (native) config.

    Routed experts: I8 ``[N, K/2]`` + BF16 ``[N, K/32]``; dense: I8 ``[N, K]`` + BF16
    ``[N/128, K/128]`` (block) or U8 ``[N, K]`` + BF16 ``[N]`` (channel); the rest unchanged.
    """
    out = {}
    for name, spec in native_inventory(config).items():
        if spec.role == EXPERT:
            if name.endswith(".weight"):
                out[name] = ("I8", spec.shape)
            else:
                n, k32 = spec.shape
                out[name] = ("BF16", (n, k32))
        elif spec.role == DENSE:
            if name.endswith(".weight"):
                n, k = spec.shape
                out[name] = ("I8", (n, k)) if strategy == "block" else ("U8", (n, k))
                out[name[: -len("weight")] + "scale"] = (
                    ("BF16", (math.ceil(n / 128), math.ceil(k / 128))) if strategy == "block" else ("BF16", (n,)))
        else:
            out[name] = (spec.dtype, spec.shape)
    return out


def dsv4_int_config(spec: SynthSpec = REAL, strategy: str = "block") -> dict:
    cfg = make_config(spec)
    cfg["expert_dtype"] = "int4"
    cfg["quantization_config"] = make_quantization_config(strategy, "mse")
    return cfg


def _shard_of(name: str, n_layers: int, per_shard: int) -> int:
    """Group tensors by layer like the release: a few layers per shard, globals first/last."""
    parts = name.split(".")
    if parts[0] == "layers":
        return 1 + int(parts[1]) // per_shard
    if parts[0] == "mtp":
        return 1 + n_layers // per_shard + 1
    return 0 if name.startswith("embed") else 1 + n_layers // per_shard + 2


def native_tensors(config: dict) -> dict[str, tuple[str, tuple[int, ...]]]:
    """name -> (dtype, shape) of the native release with this config, as the inventory states it."""
    return {name: (spec.dtype, spec.shape) for name, spec in native_inventory(config).items()}


def write_headers_only(out: Path, spec: SynthSpec = REAL, strategy: str = "block", layers_per_shard: int = 1,
                       native: bool = False) -> Path:
    """A dsv4_int (or, with ``native``, a native FP8/FP4) checkpoint folder (config.json, index,
    sparse shards); returns ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cfg = make_config(spec) if native else dsv4_int_config(spec, strategy)
    tensors = native_tensors(cfg) if native else dsv4_int_tensors(cfg, strategy)
    groups: dict[int, list[str]] = {}
    for name in tensors:
        groups.setdefault(_shard_of(name, cfg["num_hidden_layers"], layers_per_shard), []).append(name)
    order = sorted(groups)
    weight_map, total = {}, 0
    for i, key in enumerate(order):
        fname = f"model-{i + 1:05d}-of-{len(order):05d}.safetensors"
        shard = [OutTensor(name, *tensors[name]) for name in groups[key]]
        weight_map.update((name, fname) for name in groups[key])
        with open(out / fname, "wb") as f:
            f.write(build_header(shard))
            f.truncate(file_size(shard))
        total += sum(t.nbytes for t in shard)
    (out / "config.json").write_text(json.dumps(cfg, indent=1))
    (out / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}))
    return out
