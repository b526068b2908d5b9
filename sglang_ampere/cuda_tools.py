"""The CUDA toolkit and compiled GPU code, without a GPU: one place for finding the tools and
for reading machine code.

* :func:`find_cuda_home` -- the toolkit root SGLang's JIT and our builds use.
* :func:`find_tool` -- ``nvcc``, ``cuobjdump``, ``nvdisasm``, ``ptxas`` (Triton ships the last
  three, so a machine with only Triton can still inspect code).
* :func:`read_sass` / :func:`sass_counts` -- the SASS of a cubin or object and, per kernel, the
  instruction counts our compile-and-inspect checks assert on.

Used by ``kernel-report`` (TileLang kernels), ``quant.marlin_sass`` (Marlin), ``warmup`` and
``doctor``. Never imports torch or SGLang.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Mapping


def find_cuda_home(environ: Mapping[str, str] | None = None) -> str | None:
    """The CUDA toolkit root: ``CUDA_HOME``/``CUDA_PATH`` if set; otherwise the toolkit behind
    ``nvcc`` on PATH (also through a wrapper script such as
    ``exec /usr/local/cuda-13.0/bin/nvcc "$@"``), then ``/usr/local/cuda`` and
    ``/usr/local/cuda-*``. A candidate counts when it holds the CUDA runtime library, which
    SGLang's JIT links against. None if there is none."""
    environ = os.environ if environ is None else environ
    if environ.get("CUDA_HOME") or environ.get("CUDA_PATH"):
        return environ.get("CUDA_HOME") or environ.get("CUDA_PATH")
    candidates = []
    nvcc = shutil.which("nvcc", path=environ.get("PATH"))
    if nvcc:
        candidates.append(Path(nvcc).resolve().parent.parent)
        try:
            for word in Path(nvcc).read_text(errors="ignore")[:4096].split():
                if word.endswith("/bin/nvcc"):
                    candidates.append(Path(word).parent.parent)
        except OSError:
            pass
    candidates += [Path("/usr/local/cuda")] + sorted(Path("/usr/local").glob("cuda-*"), reverse=True)
    for c in candidates:
        if any(any((c / d).glob("libcudart.so*")) for d in ("lib64", "lib")):
            return str(c)
    return None


def find_tool(name: str) -> str:
    """``nvcc`` / ``cuobjdump`` / ``nvdisasm`` / ``ptxas``: PATH first, then the toolkit's
    ``bin/``, then the copies that ship with Triton. FileNotFoundError says what to install."""
    hit = shutil.which(name)
    if hit:
        return hit
    home = find_cuda_home()
    if home and (Path(home) / "bin" / name).exists():
        return str(Path(home) / "bin" / name)
    try:
        import triton

        cand = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / name
        if cand.exists():
            return str(cand)
    except ImportError:
        pass
    raise FileNotFoundError(
        f"{name} not found: install the CUDA toolkit (nvcc) or triton (it ships cuobjdump, nvdisasm "
        f"and ptxas in triton/backends/nvidia/bin), or put {name} on PATH")


def read_sass(binary: Path | str) -> str:
    """The SASS of a cubin or an object file (``nvdisasm -c``, else ``cuobjdump -sass``)."""
    if str(binary).endswith(".cubin"):
        p = subprocess.run([find_tool("nvdisasm"), "-c", str(binary)], capture_output=True, text=True)
        if p.returncode == 0:
            return p.stdout
    p = subprocess.run([find_tool("cuobjdump"), "-sass", str(binary)], capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError(f"cuobjdump -sass {binary} failed: {p.stderr.strip()}")
    return p.stdout


@dataclass
class SassCounts:
    hmma: int = 0        # tensor-core MMA (FP16/BF16/TF32)
    hmma_bf16: int = 0
    imma: int = 0        # integer tensor-core MMA
    traps: int = 0       # BPT.TRAP: what nvcc emits for an instruction the arch lacks
    ldl: int = 0         # local-memory loads / stores: spills or local arrays
    stl: int = 0

    def __iadd__(self, other: "SassCounts") -> "SassCounts":
        for f in fields(SassCounts):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))
        return self


_FUNCTION = re.compile(r"(?:Function : |^\s*\.text\.)(\S+?):?\s*$")
_COUNTED = (("hmma", re.compile(r"\bHMMA\.")), ("imma", re.compile(r"\bIMMA\b")),
            ("traps", re.compile(r"\bBPT\.TRAP\b")), ("ldl", re.compile(r"\bLDL\b")), ("stl", re.compile(r"\bSTL\b")))


def sass_counts(sass: str) -> dict[str, SassCounts]:
    """Instruction counts per kernel (``cuobjdump -sass`` "Function :" or ``nvdisasm``
    ``.text.<name>`` sections); lines before any kernel header count under ``""``."""
    out: dict[str, SassCounts] = {}
    current = out.setdefault("", SassCounts())
    for line in sass.splitlines():
        m = _FUNCTION.search(line)
        if m:
            current = out.setdefault(m.group(1), SassCounts())
            continue
        for attr, rx in _COUNTED:
            if rx.search(line):
                setattr(current, attr, getattr(current, attr) + 1)
                if attr == "hmma" and ".BF16" in line:
                    current.hmma_bf16 += 1
    return out


def total(counts: dict[str, SassCounts]) -> SassCounts:
    acc = SassCounts()
    for c in counts.values():
        acc += c
    return acc


@dataclass
class ResUsage:
    """Per-kernel resources from ``cuobjdump -res-usage``: registers and bytes of stack, static
    shared memory (``extern __shared__`` buffers sized at launch are not included) and local
    memory."""
    registers: int = 0
    stack: int = 0
    shared: int = 0
    local: int = 0


#: Static ``__shared__`` a block may declare on every arch since Volta; larger buffers must be
#: dynamic and opted in at launch (``cudaFuncAttributeMaxDynamicSharedMemorySize``).
STATIC_SHARED_LIMIT = 48 * 1024

_RES_FUNCTION = re.compile(r"^\s*Function (\S+?):?\s*$")
_RES_FIELDS = (("registers", re.compile(r"\bREG:(\d+)")), ("stack", re.compile(r"\bSTACK:(\d+)")),
               ("shared", re.compile(r"\bSHARED:(\d+)")), ("local", re.compile(r"\bLOCAL:(\d+)")))


def parse_res_usage(text: str) -> dict[str, ResUsage]:
    """Parse ``cuobjdump -res-usage`` output (a ``Function <name>:`` line, then a line with
    ``REG:.. STACK:.. SHARED:.. LOCAL:..``)."""
    out: dict[str, ResUsage] = {}
    current = None
    for line in text.splitlines():
        m = _RES_FUNCTION.match(line)
        if m:
            current = out.setdefault(m.group(1), ResUsage())
            continue
        if current is None:
            continue
        for attr, rx in _RES_FIELDS:
            f = rx.search(line)
            if f:
                setattr(current, attr, int(f.group(1)))
    return out


def read_res_usage(binary: Path | str) -> dict[str, ResUsage]:
    """Per-kernel resources of a cubin or object file (``cuobjdump -res-usage``)."""
    p = subprocess.run([find_tool("cuobjdump"), "-res-usage", str(binary)], capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError(f"cuobjdump -res-usage {binary} failed: {p.stderr.strip()}")
    return parse_res_usage(p.stdout)
