"""The device kit's launch manifests: what a cubin's kernel takes and how it is launched.

One :class:`KernelManifest` per TileLang kernel, written by the builder from TileLang's own
lowering (:mod:`.export`) and read by the launcher (:mod:`.runtime`):

* ``tensors``: the prim_func's tensor arguments in order, each with its dtype and shape; a
  dimension is an int (static) or the name of a symbolic size (``T.dynamic``), which must have
  one value across all tensors;
* ``params``: the device function's parameters in order: ``ptr`` (the data pointer of tensor
  ``tensor``) or ``int32`` (the value of the symbol ``expr``);
* ``grid`` (ints or symbols), ``block`` and ``dynamic_shared`` bytes.

:func:`check_against_cubin` compares the parameter list with the cubin's own parameter records
(``EIATTR_KPARAM_INFO`` in ``cuobjdump -elf``: one size per ordinal); the builder refuses to
write a kit where they differ, and the CPU tests check it again on the built files.

Pure standard library: the runner imports this on a machine with only torch.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Union

Expr = Union[int, str]

#: Bytes of a parameter of each kind in the kernel's parameter space.
PARAM_BYTES = {"ptr": 8, "int32": 4}
#: The kit.json format this code reads and writes.
KIT_FORMAT = 1


class ManifestError(ValueError):
    """A manifest is inconsistent, or does not match its cubin."""


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str                       # torch dtype name without "torch.": "bfloat16", "uint8", ...
    shape: tuple[Expr, ...]


@dataclass(frozen=True)
class Param:
    kind: str                        # "ptr" or "int32"
    tensor: int | None = None        # ptr: index into the tensors
    expr: Expr | None = None         # int32: a symbol name or a constant
    name: str = ""                   # the device function's parameter name (for messages)


@dataclass
class KernelManifest:
    key: str                         # repr() of the kernel's KernelSpec: how the runner finds it
    module: str                      # "tilelang_mla" or "tilelang_indexer"
    name: str                        # KernelSpec.name
    entry: str                       # the __global__ function's name in the cubin
    cubin: str                       # path relative to the kit folder
    arch: int                        # the cubin's SASS arch (90)
    source_arch: int                 # the tile plan and TileLang target the source was lowered for (86)
    grid: tuple[Expr, Expr, Expr]
    block: tuple[int, int, int]
    dynamic_shared: int
    tensors: tuple[TensorSpec, ...]
    params: tuple[Param, ...]
    symbols: dict[str, str] = field(default_factory=dict)   # symbol -> "tensor.shape[d]" (documentation)

    def __post_init__(self):
        self.grid = tuple(self.grid)
        self.block = tuple(int(b) for b in self.block)
        self.tensors = tuple(t if isinstance(t, TensorSpec) else TensorSpec(t["name"], t["dtype"], tuple(t["shape"]))
                             for t in self.tensors)
        self.params = tuple(p if isinstance(p, Param) else Param(**p) for p in self.params)
        self.validate()

    def symbol_names(self) -> set[str]:
        return {d for t in self.tensors for d in t.shape if isinstance(d, str)}

    def validate(self) -> None:
        """Raise :class:`ManifestError` unless every reference resolves."""
        syms = self.symbol_names()
        if len(self.grid) != 3 or len(self.block) != 3:
            raise ManifestError(f"{self.name}: grid {self.grid} / block {self.block} must have 3 entries")
        for e in self.grid:
            if isinstance(e, str) and e not in syms:
                raise ManifestError(f"{self.name}: grid uses {e!r}, which no tensor dimension defines")
        if any(b <= 0 for b in self.block) or self.block[0] * self.block[1] * self.block[2] > 1024:
            raise ManifestError(f"{self.name}: block {self.block} is not a valid CUDA block")
        for i, p in enumerate(self.params):
            if p.kind not in PARAM_BYTES:
                raise ManifestError(f"{self.name}: parameter {i} has kind {p.kind!r}")
            if p.kind == "ptr" and not (isinstance(p.tensor, int) and 0 <= p.tensor < len(self.tensors)):
                raise ManifestError(f"{self.name}: pointer parameter {i} names tensor {p.tensor!r}")
            if p.kind == "int32" and not (isinstance(p.expr, int) or p.expr in syms):
                raise ManifestError(f"{self.name}: int32 parameter {i} ({p.name}) is {p.expr!r}, not a symbol "
                                    "of the tensors' shapes")

    def param_sizes(self) -> list[int]:
        return [PARAM_BYTES[p.kind] for p in self.params]

    @staticmethod
    def evaluate(expr: Expr, sym: dict[str, int]) -> int:
        return expr if isinstance(expr, int) else int(sym[expr])

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> "KernelManifest":
        return cls(**{k: v for k, v in d.items()})


def parse_kparam_info(elf_dump: str) -> dict[str, list[int]]:
    """``{kernel: [parameter size by ordinal]}`` from ``cuobjdump -elf`` output (EIATTR_KPARAM_INFO)."""
    out: dict[str, dict[int, int]] = {}
    current = None
    pending = False
    for line in elf_dump.splitlines():
        m = re.match(r"^\.nv\.info\.(\S+)\s*$", line)
        if m:
            current, pending = m.group(1), False
            out.setdefault(current, {})
            continue
        if re.match(r"^\.\S", line):           # another section
            current, pending = None, False
            continue
        if current is None:
            continue
        if "EIATTR_KPARAM_INFO" in line:
            pending = True
            continue
        if pending:
            m = re.search(r"Ordinal\s*:\s*0x([0-9a-fA-F]+)\s+Offset\s*:\s*0x([0-9a-fA-F]+)\s+"
                          r"Size\s*:\s*0x([0-9a-fA-F]+)", line)
            if m:
                ordinal, size = int(m.group(1), 16), int(m.group(3), 16)
                if ordinal in out[current]:
                    raise ManifestError(f"{current}: parameter ordinal {ordinal} listed twice in the cubin")
                out[current][ordinal] = size
                pending = False
    result = {}
    for k, by_ord in out.items():
        if by_ord and sorted(by_ord) != list(range(len(by_ord))):
            raise ManifestError(f"{k}: the cubin's parameter ordinals {sorted(by_ord)} have gaps")
        result[k] = [by_ord[i] for i in range(len(by_ord))]
    return result


def read_kparam_info(cubin: Path, cuobjdump: str) -> dict[str, list[int]]:
    import subprocess

    p = subprocess.run([cuobjdump, "-elf", str(cubin)], capture_output=True, text=True)
    if p.returncode != 0:
        raise ManifestError(f"cuobjdump -elf {cubin} failed: {p.stderr[-2000:]}")
    return parse_kparam_info(p.stdout)


def check_against_cubin(m: KernelManifest, kparams: dict[str, list[int]]) -> None:
    """Raise :class:`ManifestError` unless the cubin has ``m.entry`` with exactly ``m``'s parameter sizes."""
    if m.entry not in kparams:
        raise ManifestError(f"{m.name}: the cubin has no kernel {m.entry!r} (it has {sorted(kparams)})")
    got, want = kparams[m.entry], m.param_sizes()
    if got != want:
        raise ManifestError(f"{m.name}: the cubin's {m.entry} takes {len(got)} parameters of sizes {got}, the "
                            f"manifest passes {len(want)} of sizes {want}")


#: The repository files the kit's TileLang cubins are compiled from (their hash goes into kit.json, and the
#: runner compares it with the repository it runs from: stale cubins are reported, not silently used).
KERNEL_SOURCES = ("sglang_ampere/kernels/tilelang_mla.py", "sglang_ampere/kernels/tilelang_indexer.py",
                  "sglang_ampere/kernels/tilelang_build.py", "sglang_ampere/kernels/kv_layout.py")


def kernel_sources_digest(repo: Path) -> str:
    """sha256 over :data:`KERNEL_SOURCES` of the repository at ``repo``."""
    import hashlib

    h = hashlib.sha256()
    for rel in KERNEL_SOURCES:
        h.update(rel.encode() + b"\0" + (Path(repo) / rel).read_bytes() + b"\0")
    return h.hexdigest()


def load_kit(kit: Path) -> dict:
    """kit.json of a kit folder, with ``tilelang`` entries as :class:`KernelManifest`."""
    path = Path(kit) / "kit.json"
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: build the kit with `sglang-ampere device-kit --out {kit}`")
    data = json.loads(path.read_text())
    if data.get("format") != KIT_FORMAT:
        raise ManifestError(f"{path} has format {data.get('format')!r}; this code reads format {KIT_FORMAT}")
    data["tilelang"] = [KernelManifest.from_json(k) for k in data.get("tilelang", [])]
    return data
