"""config.json and model.safetensors.index.json of a dsv4_int checkpoint.

The ``quantization_config`` is exactly the published dsv4_int schema (reference
dsv4-flash-format.md section 7, built by :func:`sglang_ampere.schema.make_quantization_config`),
plus one key SGLang 0.5.23 reads: ``routed_experts_quant_method`` — without it SGLang probes a
routed-expert tensor, sees I8 bytes and takes the packed INT4 experts for MXFP4. Provenance
(source, revision, index hash, converter version, options) goes in a separate top-level key,
``dsv4_int_conversion``, so the schema itself stays as published. ``expert_dtype`` becomes
``"int4"``. Every other key is kept, the ``dspark_*`` keys of V4-Flash-0731 included; for such a
checkpoint the dense targets also list the DSpark drafter's ``main_proj``.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
from pathlib import Path

from .. import __version__
from ..inventory import has_dspark_drafter
from ..schema import make_quantization_config
from .options import Options

#: scale_mode values written for each --expert-scale (the published names where they exist).
SCALE_MODE_NAMES = {"absmax": "absmax7", "mse": "mse", "optimal": "optimal"}
PROVENANCE_KEY = "dsv4_int_conversion"


def quantization_config(options: Options, dspark: bool = False) -> dict:
    return make_quantization_config(options.dense_mode, SCALE_MODE_NAMES[options.expert_mode], options.keep_bf16,
                                    dspark=dspark)


def source_revision(src: Path) -> str | None:
    """The Hugging Face snapshot revision if SRC is ``.../snapshots/<40-hex>``; else None."""
    for part in reversed(Path(src).resolve().parts):
        if re.fullmatch(r"[0-9a-f]{40}", part):
            return part
    return None


def index_sha256(src: Path) -> str | None:
    p = Path(src) / "model.safetensors.index.json"
    return hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else None


def provenance(src: Path, src_config: dict, options: Options) -> dict:
    return {
        "converter": "sglang-ampere convert",
        "converter_version": __version__,
        "source_model": src_config.get("_name_or_path") or Path(src).resolve().name,
        "source_revision": source_revision(src),
        "source_index_sha256": index_sha256(src),
        "source_quantization": (src_config.get("quantization_config") or {}).get("quant_method"),
        "options": options.as_dict(),
    }


def dsv4_int_config(src_config: dict, options: Options, prov: dict) -> dict:
    cfg = copy.deepcopy(src_config)
    cfg["expert_dtype"] = "int4"
    cfg["quantization_config"] = quantization_config(options, dspark=has_dspark_drafter(src_config))
    cfg[PROVENANCE_KEY] = prov
    return cfg


def index_json(weight_map: dict[str, str], total_size: int) -> dict:
    return {"metadata": {"total_size": int(total_size)}, "weight_map": dict(sorted(weight_map.items()))}


def dumps(obj) -> bytes:
    return (json.dumps(obj, indent=2, ensure_ascii=False) + "\n").encode("utf-8")
