"""Preset resolution: which preset applies, the environment SGLang gets, the server defaults it fills.

* environment: ``--env KEY=VALUE`` (and the ``--nsa-*-backend`` flags, shorthand for
  ``--env SGLANG_AMPERE_*_BACKEND=...``) > the caller's environment > the preset's ``[[env]]``;
* server arguments: whatever the user set (command line or ``--config`` YAML, as SGLang merges
  them) > the preset's ``[[arg]]`` defaults, which are added only for arguments set nowhere.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Mapping

from sglang_ampere import envvars
from sglang_ampere import gpus as gpus_mod
from sglang_ampere.envvars import FORK_VARS, HACK_FLASHMLA_VAR
from sglang_ampere.notes import Note, note

from .argv import NSA_CHOICES, NSA_FLAGS, ServerArgv, values_of
from .errors import LaunchError
from .presets import KNOWN_ARCHES, ArgEntry, EnvEntry, Preset

#: The fork-era variable translates to these (the sparse-MLA phases, not the indexer).
HACK_TARGETS = (envvars.PREFILL_BACKEND, envvars.DECODE_BACKEND)


@dataclass(frozen=True)
class EnvChange:
    name: str
    old: str | None        # caller's value (None = unset)
    new: str
    source: str            # "preset sm86", "--env", "--nsa-prefill-backend", ...
    reason: str


def resolve_arch(opts: argparse.Namespace, environ: Mapping[str, str], smi_output: str | None,
                 need_gpu: bool) -> tuple[str, list]:
    """The preset architecture and the GPUs visible on this node. ``opts.gpu``: ``auto`` or any
    spelling :class:`sglang_ampere.gpus.Arch` reads (``sm86``, ``sm_86``, ``86``)."""
    gpu = (opts.gpu or gpus_mod.AUTO).strip().lower()
    if gpu != gpus_mod.AUTO:
        try:
            gpu = gpus_mod.Arch.parse(gpu)
        except ValueError:
            gpu = None
        if gpu not in gpus_mod.PRESET_TARGETS:
            raise LaunchError(f"unknown --gpu {opts.gpu!r}; known: auto, {', '.join(gpus_mod.PRESET_TARGETS)} "
                              "(also spelled sm_86 or 86)")
    if gpu == gpus_mod.CPU_ARCH:
        return gpu, []            # SGLang's CPU engine: no GPU wanted, none looked for
    found, why_none = gpus_mod.detect_gpus_or_reason(environ, smi_output)
    if gpu == gpus_mod.AUTO:
        if not found:
            raise LaunchError(f"no GPU detected: {why_none}. On a machine without a GPU, preview the "
                              "command with --gpu sm86 --dry-run (or sm80/sm89/sm90/sm120)")
        arches = sorted({g.arch for g in found})
        if len(arches) > 1:
            raise LaunchError(
                "mixed GPU architectures on this node: " + gpus_mod.summarize(found)
                + ". Pick the preset with --gpu ARCH, or restrict CUDA_VISIBLE_DEVICES to one kind")
        arch = arches[0]
        if arch not in KNOWN_ARCHES:
            raise LaunchError(f"detected {arch} ({found[0].name}) has no preset; known: "
                              f"{', '.join(KNOWN_ARCHES)}. Pass --gpu ARCH or --preset FILE to choose one")
        return arch, found
    if not found and need_gpu:
        raise LaunchError(f"no GPU detected ({why_none}). --gpu {gpu} without a GPU only works with "
                          "--dry-run, which prints the command instead of running it")
    return gpu, found


def target_arch(card_arch: str, environ: Mapping[str, str], overrides: Mapping[str, str]) -> str:
    """The preset architecture for a card of ``card_arch``: its own, or
    :data:`sglang_ampere.gpus.AMPERE_STAND_IN` for an sm_90+ card under
    ``SGLANG_AMPERE_TARGET=ampere`` (from ``--env`` or the caller's environment)."""
    try:
        return gpus_mod.preset_arch(card_arch, {**environ, **overrides})
    except ValueError as exc:
        raise LaunchError(str(exc)) from exc


def ampere_target_line(card_arch: str, arch: str) -> str | None:
    """The ``--dry-run`` line saying that an sm_90+ card takes the Ampere path (None otherwise)."""
    if card_arch == arch:
        return None
    return (f"{gpus_mod.TARGET_VAR}=ampere: this {card_arch} card takes the sm_80/sm_86 path (preset {arch}'s "
            f"switches; sglang-ampere's sparse-MLA and C4-indexer kernels built for {card_arch} from the same "
            "source; Marlin W8A16/W4A16 for dsv4_int), to validate the Ampere code; unset it to run "
            "SGLang's own sm_90+ paths")


def preset_env_entries(preset: Preset, native: bool) -> list[tuple[EnvEntry, str]]:
    """(entry, source label) of the preset's variables, with its ``[native]`` ones for the native
    checkpoint (same-named [native] entries replace the general ones in place)."""
    label = f"preset {preset.source}"
    entries = {e.name: (e, label) for e in preset.env}
    if native:
        entries.update({e.name: (e, f"{label} [native]") for e in preset.native_env})
    return list(entries.values())


def preset_arg_entries(preset: Preset, native: bool) -> list[ArgEntry]:
    """The preset's server arguments, with its ``[native]`` ones for the native checkpoint."""
    entries = {a.flag: a for a in preset.args}
    if native:
        entries.update({a.flag: a for a in preset.native_args})
    return list(entries.values())


def resolve_env(preset: Preset, environ: Mapping[str, str], overrides: Mapping[str, str],
                opts: argparse.Namespace, native: bool = False) -> tuple[dict[str, str], list[EnvChange], list[Note]]:
    """Apply preset < caller < --env, then the sparse-MLA / indexer backend selection.
    ``native``: the checkpoint is the native FP8/FP4 release served below sm_90 (adds ``[native]``)."""
    env = dict(environ)
    notes: list[Note] = []
    pending: dict[str, tuple[str, str, str]] = {}    # name -> (value, source, reason)
    for e, label in preset_env_entries(preset, native):
        user = overrides.get(e.name, environ.get(e.name))
        if e.required and user is not None and not envvars.same_value(e.name, user, e.value):
            where = "--env" if e.name in overrides else "your environment"
            raise LaunchError(f"{e.name}={user} (from {where}) cannot serve {_what_requires(label)}: "
                              f"{e.reason}. Unset it, or set {e.name}={e.value}")
        if e.name in environ:
            if not envvars.same_value(e.name, environ[e.name], e.value):
                notes.append(note("launch.env-kept", f"keeping your {e.name}={environ[e.name]} over {label}'s "
                                  f"{e.value} ({e.reason})"))
            continue
        pending[e.name] = (e.value, label, e.reason)
    for k, v in overrides.items():
        pending[k] = (v, "--env", "set on the command line")

    # Backends: --nsa flag > --env SGLANG_AMPERE_* > --env HACK > caller's > caller's HACK > preset
    # (the HACK variable only for the two sparse-MLA phases).
    def from_hack(source_env: Mapping[str, str]) -> str | None:
        v = source_env.get(HACK_FLASHMLA_VAR)
        return v if v in NSA_CHOICES else None

    for flag, attr, var in NSA_FLAGS:
        hack = var in HACK_TARGETS
        flag_value = getattr(opts, attr)
        if flag_value is not None:
            if var in overrides and overrides[var] != flag_value:
                raise LaunchError(f"{flag} {flag_value} contradicts --env {var}={overrides[var]}; give one")
            pending[var] = (flag_value, flag, "fork-era flag translated by the launcher")
        elif var in overrides:
            pass
        elif hack and from_hack(overrides):
            pending[var] = (from_hack(overrides), f"--env {HACK_FLASHMLA_VAR}", "fork-era variable translated")
        elif var in environ:
            pending.pop(var, None)
        elif hack and from_hack(environ):
            pending[var] = (from_hack(environ), HACK_FLASHMLA_VAR, "fork-era variable translated")
        value = pending.get(var, (env.get(var),))[0]
        choices = envvars.VARS[var].choices
        if value is not None and choices and value not in choices:
            raise LaunchError(f"{var}={value!r} is not one of {', '.join(choices)}")

    for name in FORK_VARS:
        if name in overrides or name in environ:
            value = overrides.get(name, environ.get(name))
            line = f"{name}={value}: {FORK_VARS[name]}"
            if name == HACK_FLASHMLA_VAR and value not in NSA_CHOICES:
                line = (f"{name}={value}: SGLang 0.5.23 reads it only on ROCm, so it does nothing "
                        "here; use --nsa-prefill-backend/--nsa-decode-backend {torch,tilelang}")
            notes.append(note("launch.fork-variable", line))

    changes = []
    for name, (value, source, reason) in pending.items():
        old = environ.get(name)
        env[name] = value
        if old != value:
            changes.append(EnvChange(name, old, value, source, reason))
    return env, changes, notes


def add_cpu_site(env: dict[str, str], changes: list[EnvChange]) -> None:
    """The CPU target's boot folder first on ``PYTHONPATH`` (see :mod:`sglang_ampere.cpu_target`:
    every server process must answer ``import sgl_kernel`` before any plugin runs)."""
    from sglang_ampere import cpu_target

    old = env.get("PYTHONPATH")
    env["PYTHONPATH"] = cpu_target.pythonpath(old)
    if env["PYTHONPATH"] != old:
        changes.append(EnvChange("PYTHONPATH", old, env["PYTHONPATH"], "--gpu cpu",
                                 "sglang-ampere's CPU boot file: a stand-in sgl_kernel in every server process"))


#: SGLang's CPU engine binds each rank's OpenMP threads to one NUMA node unless this is set, and
#: refuses more ranks than nodes (``srt/utils/numa_utils.py`` ``init_threads_binding``).
THREADS_BIND_VAR = envvars.SGLANG_CPU_OMP_THREADS_BIND


def numa_nodes() -> int:
    """NUMA nodes of this host as SGLang counts them (1 where sysfs says nothing)."""
    import glob

    return len(glob.glob("/sys/devices/system/node/node[0-9]*")) or 1


def cpu_threads_bind(ranks: int, cpus: list[int]) -> str:
    """``SGLANG_CPU_OMP_THREADS_BIND`` for ``ranks`` server ranks on ``cpus``: contiguous groups
    ("0,1|2,3"), or one CPU per rank, shared round-robin, when there are fewer CPUs than ranks."""
    if ranks < 1 or not cpus:
        raise ValueError(f"cpu_threads_bind needs ranks >= 1 and a CPU, got {ranks} ranks, cpus {cpus}")
    cpus = sorted(cpus)
    if len(cpus) < ranks:
        return "|".join(str(cpus[r % len(cpus)]) for r in range(ranks))
    base, extra = divmod(len(cpus), ranks)
    groups, start = [], 0
    for r in range(ranks):
        n = base + (1 if r < extra else 0)
        groups.append(",".join(str(c) for c in cpus[start:start + n]))
        start += n
    return "|".join(groups)


def add_cpu_threads(env: dict[str, str], changes: list[EnvChange], ranks: int,
                    nodes: int | None = None, cpus: list[int] | None = None) -> None:
    """The CPU target with more server ranks (pp x tp x dp) than NUMA nodes: SGLang's CPU engine
    then asserts in every rank (``numa_utils.init_threads_binding``: "the total number of ranks ...
    should be smaller than or equal to number of numa node") unless ``SGLANG_CPU_OMP_THREADS_BIND``
    gives each rank its CPUs; set it from this host's CPUs unless the user did. Where SGLang's
    CPU kernels are not installed (the CPU target's case) the binding is only recorded; the
    ranks share the host's cores as any processes do."""
    nodes = numa_nodes() if nodes is None else nodes
    if ranks <= nodes or env.get(THREADS_BIND_VAR):
        return
    import os

    cpus = sorted(os.sched_getaffinity(0)) if cpus is None else cpus
    value = cpu_threads_bind(ranks, cpus)
    env[THREADS_BIND_VAR] = value
    changes.append(EnvChange(THREADS_BIND_VAR, None, value, "--gpu cpu",
                             f"{ranks} server ranks on {nodes} NUMA node(s): SGLang's CPU engine refuses more "
                             "ranks than nodes unless each rank's CPUs are given"))


def _what_requires(label: str) -> str:
    """What a ``required`` preset entry exists for, from its source label ("preset sm86 [native]")."""
    if label.endswith("[native]"):
        return "the native FP8/FP4 checkpoint"
    return f"the {label.removeprefix('preset ')} target"


def fill_server_args(preset: Preset, server: ServerArgv,
                     native: bool = False) -> tuple[list[str], list[ArgEntry], list[ArgEntry]]:
    """(argv to append, preset entries used, preset entries the user's own value overrode).

    An entry is used only if none of the SGLang arguments it sets was given on the command line
    or in the ``--config`` YAML (aliases count: SGLang's parser maps them to the same dest). A
    ``required`` entry (the native checkpoint's, e.g. ``--moe-runner-backend marlin``) that the
    user set to another value is a :class:`LaunchError` naming the flag.
    """
    extra: list[str] = []
    used, kept = [], []
    for a in preset_arg_entries(preset, native):
        try:
            wanted = values_of(a.argv())
        except LaunchError as exc:
            raise LaunchError(f"preset {preset.source}: [[arg]] {' '.join(a.argv())}: {exc}") from exc
        given = set(wanted) & server.given
        if given:
            clash = sorted(d for d in given if server.value(d) != wanted[d])
            if a.required and clash:
                theirs = server.value(clash[0])
                what = _what_requires(f"preset {preset.source}" + (" [native]" if a in preset.native_args else ""))
                raise LaunchError(f"{a.flag} {theirs} cannot serve {what}: {a.reason}. "
                                  f"Drop {a.flag}, or pass {' '.join(a.argv())}")
            kept.append(a)
        else:
            used.append(a)
            extra += a.argv()
    return extra, used, kept
