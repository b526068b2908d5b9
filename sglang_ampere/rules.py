"""What dtype and scale shape each tensor role has, in the native release and in dsv4_int.

The one home of these rules: the converter's plan (:mod:`.convert.plan`), the audit
(:mod:`.convert.audit`) and the serving config (:class:`~sglang_ampere.quant.config.Dsv4IntConfig`)
all ask here, and format their own messages around the answer. Roles come from
:func:`sglang_ampere.inventory.classify`; the quantization_config schema from :mod:`.schema`.
Tensors are described by their safetensors dtype string and shape (headers only).

Each ``*_problem`` function returns ``None`` when the tensor(s) fit, else a one-line reason
(without the tensor's own name; the caller adds it and where it is stored).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Optional, Sequence

from .formats.blocks import block_scale_shape
from .formats.constants import INT4_GROUP, MXFP4_GROUP

Shape = Sequence[int]

# --- safetensors dtype strings, by role --------------------------------------------------------
#: Tensors copied byte for byte (norms, embeddings, gates, hc_*, compressors, tid2eid ...).
PRESERVED_DTYPES = ("BF16", "F16", "F32", "I32", "I64")
#: Native routed experts: MXFP4 codes packed two per byte, E8M0 scales.
NATIVE_EXPERT_WEIGHT_DTYPES = ("I8", "U8")
NATIVE_EXPERT_SCALE_DTYPE = "F8_E8M0"
#: Native dense: FP8 e4m3 weights, 128x128 block scales (E8M0, or F32 in some releases).
NATIVE_DENSE_WEIGHT_DTYPE = "F8_E4M3"
NATIVE_DENSE_SCALE_DTYPES = ("F8_E8M0", "F32")
#: dsv4_int routed experts: uint4b8 packed two per byte in I8 storage, BF16 group-32 scales.
EXPERT_WEIGHT_DTYPE = "I8"
#: dsv4_int dense INT8 weight dtype per strategy (block: int8; channel: value + 128 as uint8).
DENSE_INT8_DTYPES = {"block": "I8", "channel": "U8"}
#: Every dsv4_int scale is BF16.
SCALE_DTYPE = "BF16"
#: A dense layer kept unquantized (``--keep-bf16``) or read as float by the serving config.
FLOAT_DTYPES = ("BF16", "F16", "F32")


# --- scale shapes ------------------------------------------------------------------------------

def native_expert_scale_shape(weight_shape: Shape) -> tuple[int, int]:
    """``[N, K/2]`` packed MXFP4 -> its E8M0 scale ``[N, K/32]``."""
    n, half_k = weight_shape
    return (n, 2 * half_k // MXFP4_GROUP)


def expert_scale_shape(weight_shape: Shape) -> tuple[int, int]:
    """``[N, K/2]`` packed uint4b8 -> its BF16 scale ``[N, K/32]`` (INT4 group 32)."""
    n, half_k = weight_shape
    return (n, 2 * half_k // INT4_GROUP)


def dense_scale_shape(strategy: str, weight_shape: Shape) -> tuple[int, ...]:
    """The scale of a ``[N, K]`` dense weight: ``block`` (also native FP8) 128x128 blocks, ``channel`` ``[N]``."""
    n, k = weight_shape
    return block_scale_shape(n, k) if strategy == "block" else (n,)


#: What :func:`expert_problem` returns for a weight without its scale (callers count these).
MISSING_SCALE = "missing scale"


# --- checks ------------------------------------------------------------------------------------

def native_expert_problem(w_dtype: str, w_shape: Shape, s_dtype: str, s_shape: Shape,
                          weight_name: str = "") -> Optional[tuple[str, str]]:
    """A native routed-expert MXFP4 pair: ``None``, or ``("weight" | "scale", reason)``."""
    if w_dtype not in NATIVE_EXPERT_WEIGHT_DTYPES:
        hint = " (FP8 routed experts, as in V4-Flash-Base, are not supported)" if w_dtype == "F8_E4M3" else ""
        return "weight", f"dtype {w_dtype} is not valid for a routed-expert MXFP4 weight (expected I8){hint}"
    if s_dtype != NATIVE_EXPERT_SCALE_DTYPE:
        return "scale", (f"dtype {s_dtype} is not valid for a routed-expert MXFP4 scale "
                         f"(expected {NATIVE_EXPERT_SCALE_DTYPE})")
    if len(w_shape) != 2 or (2 * w_shape[1]) % MXFP4_GROUP:
        return "weight", f"shape {list(w_shape)} is not [N, K/2] with K a multiple of {MXFP4_GROUP}"
    want = native_expert_scale_shape(w_shape)
    if tuple(s_shape) != want:
        return "scale", _misfit(s_shape, weight_name, w_shape, want)
    return None


def native_dense_problem(w_dtype: str, w_shape: Shape, s_dtype: str, s_shape: Shape,
                         weight_name: str = "") -> Optional[tuple[str, str]]:
    """A native dense FP8 pair with its 128x128 block scale: ``None``, or ``("weight" | "scale", reason)``."""
    if w_dtype != NATIVE_DENSE_WEIGHT_DTYPE:
        return "weight", f"dtype {w_dtype} is not valid for a dense FP8 weight (expected {NATIVE_DENSE_WEIGHT_DTYPE})"
    if s_dtype not in NATIVE_DENSE_SCALE_DTYPES:
        return "scale", (f"dtype {s_dtype} is not valid for an FP8 block scale "
                         f"(expected {' or '.join(NATIVE_DENSE_SCALE_DTYPES)})")
    if len(w_shape) != 2:
        return "weight", f"shape {list(w_shape)} is not 2-D"
    want = dense_scale_shape("block", w_shape)
    if tuple(s_shape) != want:
        return "scale", _misfit(s_shape, weight_name, w_shape, want)
    return None


def _misfit(s_shape: Shape, weight_name: str, w_shape: Shape, want: Shape) -> str:
    weight = f"weight {weight_name} " if weight_name else "weight "
    return f"scale shape {list(s_shape)} does not fit {weight}{list(w_shape)} (expected {list(want)})"


def expert_problem(w_dtype: str, w_shape: Shape, scale: Optional[tuple[str, Shape]]) -> Optional[str]:
    """A dsv4_int routed expert: I8 ``[N, K/2]`` (packed uint4b8) with a BF16 ``[N, K/32]`` scale."""
    if w_dtype != EXPERT_WEIGHT_DTYPE or len(w_shape) != 2:
        return (f"routed expert weight must be {EXPERT_WEIGHT_DTYPE} [N, K/2] (uint4b8), "
                f"got {w_dtype} {list(w_shape)}")
    if scale is None:
        return MISSING_SCALE
    want = expert_scale_shape(w_shape)
    if scale[0] != SCALE_DTYPE or tuple(scale[1]) != want:
        return f"expert scale must be {SCALE_DTYPE} {list(want)}, got {scale[0]} {list(scale[1])}"
    return None


def dense_int8_strategy(w_dtype: str, w_shape: Shape, scale: Optional[tuple[str, Shape]]) -> Optional[str]:
    """``"block"`` or ``"channel"`` if a dense weight and its scale form that dsv4_int INT8 layout, else None."""
    if scale is None or len(w_shape) != 2 or scale[0] != SCALE_DTYPE:
        return None
    for strategy, dtype in DENSE_INT8_DTYPES.items():
        if w_dtype == dtype and tuple(scale[1]) == dense_scale_shape(strategy, w_shape):
            return strategy
    return None


def dense_int8_weight_problem(strategy: str, w_dtype: str, w_shape: Shape) -> Optional[str]:
    """A dsv4_int dense INT8 weight of the checkpoint's ``strategy`` (the scale: :func:`dense_int8_scale_problem`)."""
    want = DENSE_INT8_DTYPES[strategy]
    if w_dtype != want:
        return (f"is {w_dtype} but quantization_config says strategy '{strategy}' (weights {want}); "
                "the config and the tensors disagree")
    if len(w_shape) != 2:
        return f"must be 2-D, got shape {list(w_shape)}"
    return None


def dense_int8_scale_problem(strategy: str, w_shape: Shape, scale: tuple[str, Shape]) -> Optional[str]:
    """The BF16 scale of a 2-D dsv4_int dense INT8 weight."""
    want_shape = dense_scale_shape(strategy, w_shape)
    if scale[0] != SCALE_DTYPE or tuple(scale[1]) != tuple(want_shape):
        return (f"scale is {scale[0]} {list(scale[1])}; expected {SCALE_DTYPE} {list(want_shape)} "
                f"for a {strategy} INT8 weight of shape {list(w_shape)}")
    return None


# --- duplicates --------------------------------------------------------------------------------

def locate_tensors(shards: Mapping[str, Iterable[str]]) -> tuple[dict[str, str], list[tuple[str, str, str]]]:
    """``(tensor -> the first shard holding it, [(shard, tensor, first shard)] for every repeat)``.

    ``shards`` maps shard file names (in order) to the tensor names in their headers.
    """
    where: dict[str, str] = {}
    duplicates: list[tuple[str, str, str]] = []
    for shard, names in shards.items():
        for name in names:
            if name in where:
                duplicates.append((shard, name, where[name]))
            else:
                where[name] = shard
    return where, duplicates
