"""The safetensors format: headers (read and checked, or built), shard listing, the dtype table
and tensor reads.

A safetensors file is: 8 bytes little-endian header length ``L``, ``L`` bytes of JSON
``{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}}``, then the
data; offsets are relative to the end of the header. Everything a header claims is checked
against the file's size, so a truncated download or a damaged header is caught here, before
the converter writes anything, with the shard named.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path

#: safetensors dtype string -> (bytes per element, name of the torch dtype).
_DTYPES = {
    "BOOL": (1, "bool"), "U8": (1, "uint8"), "I8": (1, "int8"),
    "F8_E4M3": (1, "float8_e4m3fn"), "F8_E5M2": (1, "float8_e5m2"), "F8_E8M0": (1, "float8_e8m0fnu"),
    "I16": (2, "int16"), "U16": (2, "uint16"), "F16": (2, "float16"), "BF16": (2, "bfloat16"),
    "I32": (4, "int32"), "U32": (4, "uint32"), "F32": (4, "float32"),
    "I64": (8, "int64"), "U64": (8, "uint64"), "F64": (8, "float64"),
}
#: safetensors dtype string -> bytes per element.
DTYPE_SIZES = {k: size for k, (size, _) in _DTYPES.items()}
#: safetensors dtype string -> torch dtype name (names, so that this module imports without torch:
#: the launcher and the memory plan read headers only); :func:`torch_dtype` gives the dtype.
TORCH_DTYPE_NAMES = {k: name for k, (_, name) in _DTYPES.items()}
#: Refuse absurd header lengths instead of allocating them (real headers are < 10 MB).
MAX_HEADER_BYTES = 100 * 1024 * 1024


class CheckpointError(ValueError):
    """A checkpoint cannot be converted or audited as it is. The message says what to do.

    ``problems`` is every problem found, one line each, none left out (the message may show
    only the first ones); a single problem is the message itself.
    """

    def __init__(self, message: str, problems: list[str] | None = None):
        super().__init__(message)
        self.problems: list[str] = list(problems) if problems is not None else [message]

    def __reduce__(self):   # survives pickling (worker processes) with its problems
        return (type(self), (str(self), self.problems))


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dtype: str
    shape: tuple[int, ...]
    begin: int            # absolute file offset of the first data byte
    end: int              # absolute file offset one past the last data byte

    @property
    def nbytes(self) -> int:
        return self.end - self.begin


@dataclass
class ShardHeader:
    path: Path
    file_size: int
    header_sha256: str     # of the 8 length bytes + the JSON header
    mtime_ns: int = 0
    tensors: dict[str, TensorInfo] = field(default_factory=dict)
    metadata: dict = field(default_factory=dict)
    data_start: int = 0    # absolute file offset of the data section (8 + the JSON header's length)

    @property
    def name(self) -> str:
        return self.path.name

    def identity(self) -> dict:
        """What the manifest records to recognise this source shard later, without reading its
        data: size, header SHA-256 and modification time (a re-downloaded or edited shard gets
        a new one; ``cp -a``/``mv`` keep it)."""
        return {"size": self.file_size, "header_sha256": self.header_sha256, "mtime_ns": self.mtime_ns}


@dataclass(frozen=True)
class OutTensor:
    """A tensor to be written: what :func:`build_header` lays out."""

    name: str
    dtype: str                 # safetensors dtype string
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * DTYPE_SIZES[self.dtype]


def build_header(tensors: list[OutTensor], metadata: dict | None = None) -> bytes:
    """The 8-byte length + JSON header of a file holding ``tensors`` in this order.

    Deterministic (same inputs, same bytes); the JSON is space-padded to a multiple of 8 bytes
    so the data section is aligned, as the reference writer does.
    """
    obj: dict = {"__metadata__": dict(metadata or {"format": "pt"})}
    off = 0
    for t in tensors:
        obj[t.name] = {"dtype": t.dtype, "shape": list(t.shape), "data_offsets": [off, off + t.nbytes]}
        off += t.nbytes
    raw = json.dumps(obj, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)
    return len(raw).to_bytes(8, "little") + raw


def file_size(tensors: list[OutTensor], metadata: dict | None = None) -> int:
    """The size of the file :func:`build_header` heads: header plus every tensor's bytes."""
    return len(build_header(tensors, metadata)) + sum(t.nbytes for t in tensors)


def _bad(path: Path, problem: str) -> CheckpointError:
    return CheckpointError(f"shard {path.name}: {problem} (re-download or re-copy this file)")


def read_header(path: str | os.PathLike) -> ShardHeader:
    """Parse and check one shard's header. Raises :class:`CheckpointError` naming the shard."""
    path = Path(path)
    try:
        st = path.stat()
        size = st.st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise _bad(path, f"file is {size} bytes, too short to hold a safetensors header (truncated)")
            (hlen,) = struct.unpack("<Q", head)
            if hlen > MAX_HEADER_BYTES or 8 + hlen > size:
                raise _bad(
                    path,
                    f"header length {hlen} does not fit the file size {size} (truncated or not a safetensors file)",
                )
            raw = f.read(hlen)
    except OSError as e:
        raise CheckpointError(f"shard {path.name}: cannot read: {e}") from e
    try:
        obj = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise _bad(path, f"header is not valid JSON ({e}); the file is corrupt") from e
    if not isinstance(obj, dict):
        raise _bad(path, "header is not a JSON object; the file is corrupt")
    data_start = 8 + hlen
    meta = obj.pop("__metadata__", {}) or {}
    hdr = ShardHeader(
        path, size, hashlib.sha256(head + raw).hexdigest(), st.st_mtime_ns, {}, meta if isinstance(meta, dict) else {},
        data_start,
    )
    spans = []
    for name, info in obj.items():
        try:
            dtype, shape, (b, e) = info["dtype"], tuple(int(d) for d in info["shape"]), info["data_offsets"]
            b, e = int(b), int(e)
        except (KeyError, TypeError, ValueError) as exc:
            raise _bad(path, f"tensor {name}: malformed header entry {info!r}") from exc
        if dtype not in DTYPE_SIZES:
            raise CheckpointError(f"shard {path.name}: tensor {name}: unknown safetensors dtype {dtype!r}; "
                                  "this converter handles native DeepSeek-V4-Flash checkpoints only")
        want = math.prod(shape) * DTYPE_SIZES[dtype]
        if any(d < 0 for d in shape) or b < 0 or e - b != want:
            raise _bad(
                path, f"tensor {name}: offsets [{b}, {e}] do not match dtype {dtype} shape {list(shape)} ({want} bytes)"
            )
        if data_start + e > size:
            raise _bad(path, f"tensor {name} ends at byte {data_start + e} but the file has {size} bytes (truncated)")
        hdr.tensors[name] = TensorInfo(name, dtype, shape, data_start + b, data_start + e)
        spans.append((b, e, name))
    spans.sort()
    for (_, e0, n0), (b1, _, n1) in zip(spans, spans[1:]):
        if b1 < e0:
            raise _bad(path, f"tensors {n0} and {n1} overlap in the data section; the header is corrupt")
    return hdr


def read_tensor_bytes(path: Path, info: TensorInfo, f=None) -> bytearray:
    """The raw bytes of one tensor (one ``readinto``; no mmap of the whole shard)."""
    buf = bytearray(info.nbytes)
    own = f is None
    f = open(path, "rb") if own else f
    try:
        f.seek(info.begin)
        view = memoryview(buf)
        got = 0
        while got < len(buf):
            n = f.readinto(view[got:])
            if not n:
                raise CheckpointError(f"shard {path.name}: tensor {info.name}: file ended early (truncated)")
            got += n
    finally:
        if own:
            f.close()
    return buf


def torch_dtype(dtype: str):
    """The ``torch.dtype`` of a safetensors dtype string (``KeyError`` for one not in the table)."""
    import torch

    return getattr(torch, TORCH_DTYPE_NAMES[dtype])


def safetensors_dtype(dtype) -> str:
    """The safetensors dtype string of a ``torch.dtype`` (its ``str`` for one not in the table)."""
    name = str(dtype).removeprefix("torch.")
    return next((k for k, n in TORCH_DTYPE_NAMES.items() if n == name), str(dtype))


def read_tensor(path: Path, info: TensorInfo, f=None, dtype=None):
    """One tensor as a CPU ``torch.Tensor`` of its header's shape, holding its bytes (no copy):
    of its header's dtype, or viewed as ``dtype`` (a ``torch.dtype`` of the same element size).
    ``f``, an open file of ``path``, is read from instead of opening it again."""
    import torch

    buf = read_tensor_bytes(path, info, f)
    t = torch.frombuffer(buf, dtype=torch.uint8) if len(buf) else torch.empty(0, dtype=torch.uint8)
    return t.view(torch_dtype(info.dtype) if dtype is None else dtype).reshape(info.shape)


def list_shards(src: Path) -> list[Path]:
    """The ``*.safetensors`` files of a checkpoint folder, in name order."""
    return sorted(
        p for p in Path(src).iterdir() if p.suffix == ".safetensors" and p.is_file() and not p.name.startswith(".")
    )
