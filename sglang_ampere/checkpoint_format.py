"""Which DeepSeek-V4-Flash checkpoint a folder holds: the native FP8/FP4 release or dsv4_int.

One place for the decision the launcher, ``doctor`` and ``plan`` make before anything else:

* ``config.json`` ``quantization_config.quant_method``: ``"fp8"`` is DeepSeek's native release
  (FP8 e4m3 dense layers with 128x128 block scales), ``"dsv4_int"`` the requantized checkpoint;
* for a native checkpoint, the routed experts' on-disk dtype from one shard header, the way
  SGLang 0.5.23 itself decides ``is_fp4_experts`` when the config does not say
  (``srt/configs/deepseek_v4.py`` ``try_detect_fp4_experts``: I8/U8/F4 = MXFP4, F8_E4M3 = FP8
  experts). Only MXFP4 experts can take SGLang's Marlin MXFP4 MoE path below sm_90.

Reads ``config.json``, the index and at most one safetensors header (no tensor data). No torch
and no SGLang at import; :func:`detect` imports the header reader of :mod:`sglang_ampere.convert`
and the dtype table of :mod:`sglang_ampere.rules` when it runs.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from . import QUANT_METHOD

NATIVE = "native"
DSV4_INT = "dsv4_int"
#: ``quant_method`` of DeepSeek's native release (SGLang serves it with ``Fp8Config``).
NATIVE_QUANT_METHOD = "fp8"
#: SGLang's own spelling for a routed-expert MXFP4 layout in ``quantization_config``
#: (``routed_experts_quant_method``, ``srt/configs/model_config.py``).
MXFP4 = "mxfp4"

_EXPERT_WEIGHT = re.compile(r"^layers\.\d+\.ffn\.experts\.\d+\.w[123]\.weight$")


class CheckpointFormatError(ValueError):
    """The folder is not a checkpoint this package knows; the message says what to do."""


@dataclass(frozen=True)
class CheckpointFormat:
    kind: str | None                 # NATIVE, DSV4_INT, or None (another quant_method)
    quant_method: str | None
    #: Native only: the routed experts' safetensors dtype (None: not found in the headers).
    expert_dtype: str | None = None

    @property
    def mxfp4_experts(self) -> bool:
        """Routed experts stored as MXFP4 (two e2m1 codes per byte + E8M0 scales)."""
        from .rules import NATIVE_EXPERT_WEIGHT_DTYPES

        return self.kind == NATIVE and self.expert_dtype in NATIVE_EXPERT_WEIGHT_DTYPES


def kind_of_config(config: dict) -> tuple[str | None, str | None]:
    """(kind, quant_method) from a parsed ``config.json``."""
    qcfg = config.get("quantization_config") if isinstance(config, dict) else None
    method = qcfg.get("quant_method") if isinstance(qcfg, dict) else None
    if method == QUANT_METHOD:
        return DSV4_INT, method
    if method == NATIVE_QUANT_METHOD:
        return NATIVE, method
    return None, method


def read_config(path: str | Path) -> dict:
    """``config.json`` of a checkpoint folder; :class:`CheckpointFormatError` saying what is wrong."""
    cfg_file = Path(path) / "config.json"
    if not cfg_file.is_file():
        raise CheckpointFormatError(f"{path}: no config.json there; point it at the checkpoint directory "
                                    "(the one holding config.json and *.safetensors)")
    try:
        cfg = json.loads(cfg_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CheckpointFormatError(f"{cfg_file}: unreadable JSON ({exc})") from exc
    if not isinstance(cfg, dict):
        raise CheckpointFormatError(f"{cfg_file}: not a JSON object")
    return cfg


def routed_expert_dtype(path: str | Path) -> str | None:
    """The safetensors dtype of the first routed-expert weight, from one shard header (None: none found)."""
    from .safetensors_io import CheckpointError, list_shards, read_header

    path = Path(path)
    shards: list[Path] = []
    index = path / "model.safetensors.index.json"
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8")).get("weight_map", {})
        first = next((n for n in sorted(weight_map) if _EXPERT_WEIGHT.match(n)), None)
        if first is not None:
            shards = [path / weight_map[first]]
    except (OSError, ValueError, AttributeError):
        shards = []
    if not shards:
        shards = list_shards(path)
    for shard in shards:
        try:
            tensors = read_header(shard).tensors
        except CheckpointError as exc:
            raise CheckpointFormatError(str(exc)) from exc
        for name in sorted(tensors):
            if _EXPERT_WEIGHT.match(name):
                return tensors[name].dtype
    return None


def detect(path: str | Path, config: dict | None = None) -> CheckpointFormat:
    """The format of the checkpoint folder ``path`` (``config``: its parsed config.json, if read)."""
    config = read_config(path) if config is None else config
    kind, method = kind_of_config(config)
    if kind != NATIVE:
        return CheckpointFormat(kind, method)
    declared = ((config.get("quantization_config") or {}).get("routed_experts_quant_method"))
    dtype = routed_expert_dtype(path)
    if dtype is None and declared == MXFP4:
        dtype = "I8"            # declared by the config and no expert header found to contradict it
    return CheckpointFormat(kind, method, dtype)
