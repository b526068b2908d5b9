"""One access layer for the reference forward: native and dsv4_int checkpoints, read per tensor.

What it reads
-------------
* **native** DeepSeek-V4-Flash (``quantization_config.quant_method == "fp8"``): dense FP8 e4m3
  ``[N, K]`` + E8M0 (or F32) 128x128 block scales, routed experts MXFP4 ``[N, K/2]`` + E8M0
  ``[N, K/32]``, everything else BF16/F32/I64.
* **dsv4_int** (``quant_method == "dsv4_int"``, parsed strictly by :mod:`sglang_ampere.schema`):
  dense INT8 block (I8 ``[N, K]`` + BF16 ``[N/128, K/128]``) or channel (U8 value+128 ``[N, K]``
  + BF16 ``[N]``), routed experts INT4 ``uint4b8`` group 32 (I8 ``[N, K/2]`` + BF16
  ``[N, K/32]``), BF16-kept layers (a dense name stored BF16 without a ``.scale``), the rest
  copied.

Every decision is taken from the tensors' real dtypes and the role :func:`inventory.classify`
gives the name (the schema's target lists are declarative and broader than what is INT8), with
the layout rules of :mod:`sglang_ampere.rules`; the bit-level decoding is
:mod:`sglang_ampere.formats`, called here and nowhere else in ``reference/``. Shard headers
are read with :mod:`sglang_ampere.safetensors_io` (which checks every offset against the
file size); tensor bytes are read one tensor at a time, so
``bytes_read`` counts exactly what a pass reads from disk.

Dequantization happens per tensor, when the forward asks for it (:meth:`Weights.get`), to
float32; a :class:`Weights` of one layer holds the raw on-disk bytes of that layer only.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import torch

from .. import QUANT_METHOD, rules
from ..checkpoint_format import DSV4_INT, NATIVE, kind_of_config
from ..formats import (
    FormatError,
    fp8_block_dequantize,
    int4_group_dequantize,
    int8_block_dequantize,
    mxfp4_dequantize,
    uint8_channel_dequantize,
)
from ..inventory import DENSE, EXPERT, classify
from ..safetensors_io import (
    CheckpointError,
    TensorInfo,
    list_shards,
    read_header,
    read_tensor,
    safetensors_dtype,
)
from ..schema import SchemaError, parse_quantization_config


class ReferenceError(ValueError):
    """The reference cannot run on this input (checkpoint, tokens, options). Says what to do."""


def checkpoint_kind(config: dict, where: str = "config.json") -> str:
    """``native`` or ``dsv4_int`` from config.json, or :class:`ReferenceError`."""
    arch = config.get("architectures") or []
    if config.get("model_type") != "deepseek_v4" and "DeepseekV4ForCausalLM" not in arch:
        raise ReferenceError(
            f"{where}: model_type {config.get('model_type')!r} / architectures {arch}: "
            "the reference forward runs DeepSeek-V4-Flash (model_type deepseek_v4) only"
        )
    qc = config.get("quantization_config") or {}
    kind, method = kind_of_config(config)
    if kind == NATIVE:
        if qc.get("fmt", "e4m3") != "e4m3" or list(qc.get("weight_block_size", [128, 128])) != [128, 128]:
            raise ReferenceError(f"{where}: FP8 quantization_config {qc} is not the release's (e4m3, 128x128 blocks)")
        return NATIVE
    if kind == DSV4_INT:
        try:
            parse_quantization_config(qc)
        except SchemaError as e:
            raise ReferenceError(str(e)) from e
        return DSV4_INT
    raise ReferenceError(
        f"{where}: quantization_config.quant_method {method!r}: the reference reads native "
        f"DeepSeek-V4-Flash (fp8) and {QUANT_METHOD} checkpoints only"
    )


def _decode(name: str, w: torch.Tensor, s: torch.Tensor | None, kind: str) -> torch.Tensor:
    """One tensor (plus its ``.scale``, if any) as float32: the role from its name, the layout
    from :mod:`sglang_ampere.rules`, the bits from :mod:`sglang_ampere.formats`."""
    role = classify(name)
    wd, ws = safetensors_dtype(w.dtype), tuple(w.shape)
    if role is None or role.role not in (DENSE, EXPERT):
        if s is not None:
            raise FormatError(name, "has a .scale but is not a quantized DeepSeek-V4-Flash tensor")
        return w.float() if w.dtype.is_floating_point else w
    if s is None:
        if role.role == DENSE and wd in rules.FLOAT_DTYPES and kind == DSV4_INT:
            return w.float()  # a dense layer kept in BF16
        raise FormatError(name, f"{wd} {role.role} weight without its .scale")
    sd, ss = safetensors_dtype(s.dtype), tuple(s.shape)
    if kind == NATIVE:      # MXFP4 experts, FP8 dense
        problem, dequantize = ((rules.native_expert_problem, mxfp4_dequantize) if role.role == EXPERT
                               else (rules.native_dense_problem, fp8_block_dequantize))
        bad = problem(wd, ws, sd, ss, name)
        if bad:
            raise FormatError(name, f"{bad[0]}: {bad[1]}")
        return dequantize(w, s, name)
    if role.role == EXPERT:
        bad = rules.expert_problem(wd, ws, (sd, ss))
        if bad:
            raise FormatError(name, bad)
        return int4_group_dequantize(w, s, name)
    strategy = rules.dense_int8_strategy(wd, ws, (sd, ss))
    if strategy == "block":
        return int8_block_dequantize(w, s, name)
    if strategy == "channel":
        return uint8_channel_dequantize(w, s, name)
    raise FormatError(
        name, f"dense weight {wd} {list(ws)} with scale {sd} {list(ss)} is neither block nor channel INT8"
    )


class Weights:
    """Raw tensors of one part of the model (a layer, or the resident globals) and their decoding.

    ``get(name)`` returns float32 (integer tensors as they are) on ``device``, dequantized on
    each call; ``cached(name)`` keeps the result for the lifetime of this object. The raw bytes
    stay in host memory and are decoded there (streamed from disk, one part at a time); only the
    decoded tensor moves to the device."""

    def __init__(self, raw: dict[str, torch.Tensor], kind: str, prefix: str = "", device="cpu"):
        self.raw, self.kind, self.prefix, self.device = raw, kind, prefix, torch.device(device)
        self._cache: dict[str, torch.Tensor] = {}

    def has(self, name: str) -> bool:
        return self.prefix + name in self.raw

    def get(self, name: str) -> torch.Tensor:
        full = self.prefix + name
        if full not in self.raw:
            raise ReferenceError(f"tensor {full} is missing from the checkpoint")
        scale = None
        if full.endswith(".weight"):
            scale = self.raw.get(full[: -len("weight")] + "scale")
        return _decode(full, self.raw[full], scale, self.kind).to(self.device)

    def cached(self, name: str) -> torch.Tensor:
        if name not in self._cache:
            self._cache[name] = self.get(name)
        return self._cache[name]

    def to(self, device) -> "Weights":
        """The same raw tensors, decoded onto ``device``."""
        return Weights(self.raw, self.kind, self.prefix, device)


class Checkpoint:
    """A checkpoint folder: config, shard headers, and per-layer raw reads with a byte count."""

    def __init__(self, path):
        self.path = Path(path)
        cfg = self.path / "config.json"
        if not cfg.is_file():
            raise ReferenceError(f"{self.path}: no config.json; pass a DeepSeek-V4-Flash checkpoint folder")
        try:
            self.config = json.loads(cfg.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise ReferenceError(f"{cfg}: not valid JSON ({e})") from e
        self.kind = checkpoint_kind(self.config, str(cfg))
        shards = list_shards(self.path)
        if not shards:
            raise ReferenceError(f"{self.path}: no *.safetensors shards")
        self.where: dict[str, tuple[Path, TensorInfo]] = {}
        for p in shards:
            for n, info in read_header(p).tensors.items():
                self.where[n] = (p, info)
        self.bytes_read = 0
        self._lock = threading.Lock()

    def names(self, prefix: str) -> list[str]:
        return sorted(n for n in self.where if n.startswith(prefix))

    def read(self, names) -> dict[str, torch.Tensor]:
        """Raw tensors (on-disk dtype), read in file order, one ``readinto`` each."""
        out = {}
        by_file: dict[Path, list[TensorInfo]] = {}
        for n in names:
            if n not in self.where:
                raise ReferenceError(f"tensor {n} is missing from {self.path}")
            p, info = self.where[n]
            by_file.setdefault(p, []).append(info)
        for p, infos in by_file.items():
            with open(p, "rb") as f:
                for info in sorted(infos, key=lambda i: i.begin):
                    out[info.name] = read_tensor(p, info, f)
                    with self._lock:
                        self.bytes_read += info.nbytes
        return out

    def part(self, prefix: str) -> Weights:
        """Every tensor under ``prefix`` (e.g. ``layers.3.``), names relative to it."""
        names = self.names(prefix)
        if not names:
            raise ReferenceError(f"{self.path}: no tensors under {prefix!r} (missing layer?)")
        return Weights(self.read(names), self.kind, prefix)

    def globals(self) -> Weights:
        """The resident tensors: embedding, final norm, head and hc_head."""
        names = [
            n for n in ("embed.weight", "norm.weight", "head.weight", "hc_head_fn", "hc_head_base", "hc_head_scale")
        ]
        missing = [n for n in names if n not in self.where]
        if missing:
            raise ReferenceError(f"{self.path}: missing tensors {missing}")
        return Weights(self.read(names), self.kind)

    def disk_bytes(self, prefix: str) -> int:
        return sum(info.nbytes for n, (_, info) in self.where.items() if n.startswith(prefix))


__all__ = [
    "Checkpoint",
    "CheckpointError",
    "FormatError",
    "ReferenceError",
    "Weights",
    "checkpoint_kind",
    "NATIVE",
    "DSV4_INT",
]
