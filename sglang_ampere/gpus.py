"""GPU facts from ``nvidia-smi``, without initialising CUDA in this process, and the GPU
architectures this package knows: the one module ``launch``, ``warmup`` and ``doctor`` share.
It also holds the one decision "does this card take the Ampere path?" (:func:`takes_ampere_path`),
which the patches, the TileLang kernels, the launcher and ``doctor`` all ask, so that
``SGLANG_AMPERE_TARGET=ampere`` sends an sm_90+ card down exactly the sm_80/sm_86 path.

The launcher must not touch CUDA itself: it replaces itself with SGLang, and a CUDA context
created here would be inherited by nobody and would cost seconds. ``nvidia-smi`` reports what
the driver sees; ``CUDA_VISIBLE_DEVICES`` is then applied the way the CUDA runtime applies it
(indices or ``GPU-`` UUID prefixes, in the order given), so the count matches what SGLang gets.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from typing import Callable, Mapping

from . import envvars

#: The preset an sm_90+ card launches with under ``SGLANG_AMPERE_TARGET=ampere``: sm80 has the
#: sm86 preset's switches (it extends it; the switches are what select the code paths) and the
#: server defaults sized for 40/80 GB cards, which every sm_90+ datacenter card is at least.
AMPERE_STAND_IN = "sm80"
#: Old name of :data:`sglang_ampere.envvars.TARGET`, kept while ``launch/resolve.py`` reads it.
TARGET_VAR = envvars.TARGET


def ampere_target(environ: Mapping[str, str] | None = None) -> bool:
    """``SGLANG_AMPERE_TARGET=ampere`` is set (validated: ``auto`` or ``ampere``)."""
    return envvars.get(envvars.TARGET, environ) == "ampere"


#: ``--gpu cpu``: no GPU; SGLang's CPU engine with sglang-ampere's torch stand-ins (a test and
#: demonstration target: the whole serving path runs, slowly). It has a preset (``env/cpu.toml``).
CPU_ARCH = "cpu"


def cpu_target(environ: Mapping[str, str] | None = None) -> bool:
    """``SGLANG_AMPERE_TARGET=cpu`` is set (validated). The plugin's CPU patches additionally
    require that CUDA is unavailable (:func:`sglang_ampere.cpu_target.active`)."""
    return envvars.get(envvars.TARGET, environ) == CPU_ARCH


def takes_ampere_path(capability: tuple[int, int], environ: Mapping[str, str] | None = None) -> bool:
    """Whether a CUDA card of this compute capability runs sglang-ampere's sm_80/sm_86 path.

    sm_80..sm_89: always. sm_90 and newer: only with ``SGLANG_AMPERE_TARGET=ampere`` (then the
    patches route FlashMLA and the indexer to our kernels, built for the card's own arch from the
    same source, and the launcher applies the Ampere preset). Below sm_80: never (nothing runs).
    """
    cap = tuple(capability)
    if cap < (8, 0):
        return False
    return cap < (9, 0) or ampere_target(environ)


class Arch(str):
    """A target architecture, spelled one way: ``sm86``, ``sm120`` or ``cpu`` (it *is* that string).

    :meth:`parse` accepts every spelling a user or a tool writes: ``sm86``, ``sm_86``, ``86``,
    ``8.6`` (nvidia-smi's compute capability), any case; and ``cpu``. Every command's ``--gpu``
    flag takes it (:func:`arch_arg`); the compiler's spelling is :attr:`sass` (``sm_86``).
    """

    def __new__(cls, text: str):
        return str.__new__(cls, cls._canonical(text))

    @staticmethod
    def _canonical(text: str) -> str:
        raw = str(text).strip().lower()
        if raw == CPU_ARCH:
            return CPU_ARCH
        if "." in raw:                                   # compute capability "8.6" / "12.0"
            major, _, minor = raw.partition(".")
            digits = f"{major}{minor}" if major.isdigit() and minor.isdigit() and len(minor) == 1 else ""
        else:
            digits = raw.removeprefix("sm").removeprefix("_")
        if not digits.isdigit() or not 2 <= len(digits) <= 3 or digits[0] == "0":
            raise ValueError(f"not an architecture: {text!r} (want e.g. sm86, sm_86, 86 or cpu)")
        return f"sm{digits}"

    @classmethod
    def parse(cls, text: str) -> Arch:
        return text if isinstance(text, cls) else cls(text)

    @property
    def is_cpu(self) -> bool:
        return self == CPU_ARCH

    @property
    def capability(self) -> tuple[int, int]:
        """``(8, 6)`` for sm86, ``(12, 0)`` for sm120; ValueError for ``cpu``."""
        if self.is_cpu:
            raise ValueError("the cpu target has no compute capability")
        digits = self[2:]
        return int(digits[:-1]), int(digits[-1])

    @property
    def number(self) -> int:
        """86 for sm86 (TileLang plans and the device kit key on it)."""
        major, minor = self.capability
        return major * 10 + minor

    @property
    def sass(self) -> str:
        """``sm_86``: the spelling of nvcc, cuobjdump and TileLang targets."""
        return f"sm_{self.number}"


def arch_arg(text: str) -> Arch:
    """``argparse`` type for a ``--gpu`` flag: an :class:`Arch`, or a usage error that lists the spellings."""
    import argparse

    try:
        return Arch(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


#: ``--gpu auto``: read the architecture from ``nvidia-smi``.
AUTO = "auto"


def arch_or_auto_arg(text: str) -> Arch | str:
    """``argparse`` type for a ``--gpu`` flag that also takes ``auto``."""
    return AUTO if text.strip().lower() == AUTO else arch_arg(text)


def add_gpu_flag(parser, default: str | None, help: str, auto: bool = False, flag: str = "--gpu",
                 old: str = "--arch") -> None:
    """The one spelling of a command's architecture flag: ``--gpu ARCH`` (``sm86``, ``sm_86``, ``86``;
    with ``auto=True`` also ``auto``), ``old`` kept as an alias for the spelling commands used before."""
    parser.add_argument(flag, old, dest=flag.lstrip("-").replace("-", "_"), metavar="ARCH",
                        type=arch_or_auto_arg if auto else arch_arg,
                        default=default if default in (None, AUTO) else Arch(default),
                        help=f"{help} (sm86, sm_86 or 86; {old} is the old spelling)")


#: Architectures with a preset (``env/<arch>.toml``) and JIT targets, in the order ``--help`` lists them.
KNOWN_ARCHES: tuple[Arch, ...] = tuple(Arch(a) for a in ("sm80", "sm86", "sm89", "sm90", "sm120"))
#: What ``launch --gpu`` and the built-in presets accept: the GPU architectures, then ``cpu``.
PRESET_TARGETS = (*KNOWN_ARCHES, CPU_ARCH)


def preset_arch(card_arch: str, environ: Mapping[str, str] | None = None) -> str:
    """The preset a card of ``card_arch`` launches with: its own, or :data:`AMPERE_STAND_IN` for an
    sm_90+ card under ``SGLANG_AMPERE_TARGET=ampere``; ``cpu`` launches with its own."""
    if card_arch == CPU_ARCH:
        return CPU_ARCH
    cap = Arch(card_arch).capability
    if cap >= (9, 0) and takes_ampere_path(cap, environ):
        return AMPERE_STAND_IN
    return card_arch

#: ``nvidia-smi`` query used for detection (one CSV line per GPU, no header, no units).
QUERY_FIELDS = "index,name,compute_cap,memory.total,uuid"
NVIDIA_SMI_ARGS = ("--query-gpu=" + QUERY_FIELDS, "--format=csv,noheader,nounits")


class GpuDetectionError(RuntimeError):
    """``nvidia-smi`` is missing, failed, or printed something we cannot read."""


@dataclass(frozen=True)
class Gpu:
    index: int
    name: str
    arch: Arch          # "sm86" for compute capability 8.6
    memory_mib: int
    uuid: str

    @property
    def memory_gib(self) -> float:
        return self.memory_mib / 1024

    def describe(self) -> str:
        return f"GPU {self.index}: {self.name} ({self.arch}, {self.memory_gib:.0f} GiB)"


def parse_nvidia_smi(text: str) -> list[Gpu]:
    """Parse the output of ``nvidia-smi`` run with :data:`NVIDIA_SMI_ARGS`."""
    gpus = []
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        fields = [f.strip() for f in line.split(",")]
        if len(fields) != 5:
            raise GpuDetectionError(
                f"unexpected nvidia-smi line {line!r} (wanted {QUERY_FIELDS}); "
                "a driver older than R510 lacks compute_cap: update the NVIDIA driver, or pass --gpu")
        index, name, cap, mem, uuid = fields
        if not index.isdigit() or not mem.isdigit():
            raise GpuDetectionError(f"unexpected nvidia-smi line {line!r}; pass --gpu to skip detection")
        try:
            arch = Arch(cap)
        except ValueError:
            raise GpuDetectionError(f"unreadable compute capability {cap!r} from nvidia-smi") from None
        gpus.append(Gpu(int(index), name, arch, int(mem), uuid))
    return gpus


def apply_visible_devices(gpus: list[Gpu], visible: str | None) -> list[Gpu]:
    """The GPUs a CUDA process sees under ``CUDA_VISIBLE_DEVICES=visible``."""
    if visible is None:
        return list(gpus)
    chosen: list[Gpu] = []
    for token in (t.strip() for t in visible.split(",")):
        if not token:
            break
        match = None
        if token.isdigit():
            match = next((g for g in gpus if g.index == int(token)), None)
        else:
            match = next((g for g in gpus if g.uuid.startswith(token)), None)
        if match is None or match in chosen:
            break  # the CUDA runtime stops at the first invalid or repeated entry
        chosen.append(match)
    return chosen


def run_nvidia_smi(runner: Callable[..., subprocess.CompletedProcess] = subprocess.run) -> str:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        raise GpuDetectionError("nvidia-smi not found on PATH (no NVIDIA driver on this machine?)")
    try:
        proc = runner([exe, *NVIDIA_SMI_ARGS], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise GpuDetectionError(f"nvidia-smi could not run: {exc}") from exc
    if proc.returncode != 0:
        detail = (proc.stderr or proc.stdout or "").strip().splitlines()
        raise GpuDetectionError(
            f"nvidia-smi failed (exit {proc.returncode}): {detail[0] if detail else 'no output'}")
    return proc.stdout


def detect_gpus(environ: Mapping[str, str], smi_output: str | None = None) -> list[Gpu]:
    """Visible GPUs (``CUDA_VISIBLE_DEVICES`` applied). Raises :class:`GpuDetectionError`."""
    text = run_nvidia_smi() if smi_output is None else smi_output
    return apply_visible_devices(parse_nvidia_smi(text), environ.get("CUDA_VISIBLE_DEVICES"))


def detect_gpus_or_reason(environ: Mapping[str, str], smi_output: str | None = None) -> tuple[list[Gpu], str]:
    """``(visible GPUs, why there are none)``: the reason is meaningful only when the list is empty."""
    try:
        return detect_gpus(environ, smi_output), "nvidia-smi lists no GPU visible to CUDA (check CUDA_VISIBLE_DEVICES)"
    except GpuDetectionError as exc:
        return [], str(exc)


def summarize(gpus: list[Gpu]) -> str:
    """``"12 x NVIDIA GeForce RTX 3090 (sm86, 24 GiB)"``, grouping identical cards."""
    groups: dict[tuple[str, str, int], int] = {}
    for g in gpus:
        key = (g.name, g.arch, round(g.memory_gib))
        groups[key] = groups.get(key, 0) + 1
    return ", ".join(f"{n} x {name} ({arch}, {mem} GiB)" for (name, arch, mem), n in groups.items())
