"""``sglang-ampere doctor [--json] [--gpu ARCH] [--model-path DIR]``: is this machine ready to serve DeepSeek-V4-Flash?

Checks, each with a fix when it fails:

* the installed SGLang is the pinned release (:data:`sglang_ampere.SGLANG_PIN`), asked as the plugin
  asks it (:func:`sglang_ampere.sglang_pin.pin_problem`: ``SGLANG_AMPERE_ALLOW_ANY_SGLANG=1`` makes a
  mismatch a warning);
* the plugin's entry point (group ``sglang.srt.plugins``) is discoverable and not filtered out
  by ``SGLANG_PLUGINS``;
* in a fresh Python process (:mod:`sglang_ampere.sglang_probe`): every hook target of ``patches/``
  imports, and after SGLang loads its plugins ``dsv4_int`` is in ``QUANTIZATION_METHODS`` and in
  the ``--quantization`` choices;
* the GPUs (name, arch, memory) from ``nvidia-smi``; which preset applies (``--gpu cpu``: the CPU
  target, which wants no GPU, nvcc or CUDA headers);
* nvcc, the CUDA toolkit root, the CUDA headers the JIT kernels include (:data:`JIT_HEADERS`)
  and TileLang for the JIT kernels; the JIT cache state. SGLang's own DeepSeek-V4 kernels are
  compiled with nvcc whichever sparse-MLA backend is chosen, so a missing nvcc or header fails;
* caller environment variables that contradict the preset (its ``[native]`` entries too: a
  ``required`` one fails when the checkpoint is native, or warns when no ``--model-path`` says);
* the native FP8/FP4 checkpoint's path below sm_90 (:data:`NATIVE_TARGETS`): in the same fresh
  process, the SGLang functions it runs through import (Marlin MXFP4 MoE with the arch gate the
  ``dsv4_native`` patch lifts, the FP8 Marlin W8A16 preparation, the wo_a switch) and ``marlin``
  is a MoE runner backend;
* with ``--model-path DIR``: the checkpoint's format (:mod:`sglang_ampere.checkpoint_format`) and
  whether ``launch`` accepts it on this GPU, with what it adds for it.

Exit status: 0 when nothing failed, 1 otherwise (warnings do not fail).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shlex
import shutil
import subprocess
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Mapping

from .. import QUANT_METHOD, SGLANG_PIN, envvars, notes, sglang_pin, sglang_probe
from ..cuda_tools import find_cuda_home
from ..gpus import AUTO, add_gpu_flag
from ..notes import Note

#: A check's status, as printed and in ``--json``: from its verdict's level.
OK, WARN, FAIL = "ok", "warn", "fail"
STATUS = {"note": OK, "warning": WARN, "error": FAIL}

#: (header, what includes it) for the CUDA headers the serving path's JIT kernels need.
JIT_HEADERS = (
    ("cuda_runtime.h", "every JIT kernel (SGLang's DeepSeek-V4 and Marlin kernels, TileLang)"),
    ("curand.h", "FlashInfer's sampling kernels (top-k/top-p sampling) and SGLang's speculative "
                 "sampling (non-greedy MTP verify)"),
)
ENTRY_POINT_GROUP = "sglang.srt.plugins"
ENTRY_POINT_NAME = "sglang_ampere"
ENTRY_POINT_VALUE = "sglang_ampere.plugin:register"
#: What the fresh-process probe (:mod:`sglang_ampere.sglang_probe`) resolves for the native checkpoint.
NATIVE_TARGETS, NATIVE_PATCH, NATIVE_GATE = (sglang_probe.NATIVE_TARGETS, sglang_probe.NATIVE_PATCH,
                                             sglang_probe.NATIVE_GATE)


@dataclass(frozen=True)
class Check:
    """One line of the report: what was checked (``name``), the verdict (a :class:`~sglang_ampere.notes.Note`:
    its level gives the status, its code identifies the finding) and, when it is not ok, the fix."""
    name: str
    verdict: Note
    fix: str = ""

    @property
    def status(self) -> str:
        return STATUS[self.verdict.level]

    @property
    def detail(self) -> str:
        return self.verdict.text

    def as_dict(self) -> dict:
        return {"name": self.name, "status": self.status, "code": self.verdict.code, "detail": self.detail,
                "fix": self.fix}


def ok(name: str, code: str, detail: str) -> Check:
    return Check(name, notes.note(f"doctor.{code}", detail))


def warn(name: str, code: str, detail: str, fix: str = "") -> Check:
    return Check(name, notes.warning(f"doctor.{code}", detail), fix)


def fail(name: str, code: str, detail: str, fix: str = "") -> Check:
    return Check(name, notes.error(f"doctor.{code}", detail), fix)


# ----------------------------------------------------------------------------- checks


def check_sglang_version(environ: Mapping[str, str] | None = None,
                         installed: str | None | object = sglang_pin.INSTALLED) -> Check:
    """The plugin's own verdict (:func:`sglang_ampere.sglang_pin.pin_problem`), so the override
    ``SGLANG_AMPERE_ALLOW_ANY_SGLANG=1`` turns a mismatch into a warning here too."""
    if installed is sglang_pin.INSTALLED:
        installed = sglang_pin.installed_version()
    problem = sglang_pin.pin_problem(installed, environ)
    if problem is None:
        return ok("sglang version", "sglang-pinned", f"{installed} (pin {SGLANG_PIN})")
    fix = sglang_pin.install_command() + (" (or pip install 'sglang-ampere[serve]')" if installed is None else "")
    return Check("sglang version", problem, fix)


def check_entry_point(environ: Mapping[str, str]) -> Check:
    eps = [ep for ep in metadata.entry_points(group=ENTRY_POINT_GROUP) if ep.name == ENTRY_POINT_NAME]
    if not eps:
        return fail("plugin entry point", "no-entry-point",
                    f"no entry point {ENTRY_POINT_NAME!r} in group {ENTRY_POINT_GROUP!r}",
                    "reinstall the package so its metadata is written: pip install sglang-ampere "
                    "(or pip install -e . in a checkout)")
    if eps[0].value != ENTRY_POINT_VALUE:
        return fail("plugin entry point", "stale-entry-point", f"{ENTRY_POINT_NAME} points at {eps[0].value}",
                    "remove the stale install (pip uninstall sglang-ampere) and reinstall")
    var = envvars.SGLANG_PLUGINS
    allowed = environ.get(var)
    if allowed is not None and ENTRY_POINT_NAME not in [a.strip() for a in allowed.split(",")]:
        return fail("plugin entry point", "plugin-filtered",
                    f"{var}={allowed!r} does not list {ENTRY_POINT_NAME}, so SGLang skips it",
                    f"unset {var} or add {ENTRY_POINT_NAME} to it")
    return ok("plugin entry point", "entry-point", f"{ENTRY_POINT_GROUP}: {ENTRY_POINT_NAME} = {eps[0].value}")


def run_probe(environ: Mapping[str, str], timeout: float = 300) -> dict:
    """:mod:`sglang_ampere.sglang_probe` in a fresh interpreter (SGLang loads plugins once per process)."""
    return sglang_probe.run(environ, timeout)


def probe_checks(probe: dict) -> list[Check]:
    checks = []
    if probe.get("error"):
        checks.append(fail("sglang import + plugin load", "probe-failed", probe["error"],
                           "run: python -c 'import sglang.srt.plugins' to see the full error; "
                           f"reinstall with pip install 'sglang=={SGLANG_PIN}'"))
    bad = [t for t in probe.get("targets", []) if t[2]]
    for mod, err in probe.get("patch_errors", []):
        checks.append(fail("patch module", "patch-module", f"{mod}: {err}",
                           "the patch layer does not match this SGLang; reinstall sglang-ampere and "
                           f"sglang=={SGLANG_PIN}"))
    n = len(probe.get("targets", []))
    if bad:
        for mod, target, err in bad:
            checks.append(fail("patch hook target", "hook-target-missing", f"{target} ({mod}): {err}",
                               f"SGLang moved or renamed it; install sglang=={SGLANG_PIN}, the release the "
                               "patches are written for"))
    elif "targets" in probe and not probe.get("error"):
        checks.append(ok("patch hook targets", "hook-targets", f"{n} target(s) importable"))
    if not probe.get("error"):
        log = probe.get("plugin_log", "").strip()
        hint = f" SGLang logged: {log.splitlines()[-1]}" if log else ""
        if probe.get("registered") and probe.get("cli_choice"):
            checks.append(ok("dsv4_int registered", "registered",
                             "in QUANTIZATION_METHODS and --quantization choices after load_plugins()"))
        else:
            where = [w for w, present in (("QUANTIZATION_METHODS", probe.get("registered")),
                                          ("--quantization choices", probe.get("cli_choice"))) if not present]
            checks.append(fail("dsv4_int registered", "not-registered",
                               f"after SGLang loaded its plugins, {QUANT_METHOD} is missing from "
                               f"{' and '.join(where)}.{hint}",
                               "the plugin did not register it: check the log above for "
                               "'Failed to execute general plugin: sglang_ampere', reinstall sglang-ampere"))
    checks += native_probe_checks(probe)
    if probe.get("tilelang"):
        checks.append(ok("tilelang", "tilelang", f"tilelang {probe['tilelang']} imports"))
    else:
        checks.append(fail("tilelang", "no-tilelang", f"tilelang does not import: {probe.get('tilelang_error', '?')}",
                           "pip install the tilelang version SGLang pins (tilelang==0.1.12 for 0.5.23)"))
    return checks


def native_probe_checks(probe: dict) -> list[Check]:
    """The native checkpoint's path below sm_90, from the probe (nothing when the probe failed early)."""
    native = probe.get("native")
    if probe.get("error") or native is None:
        return []
    fix = f"install sglang=={SGLANG_PIN} (the release the native path is written for) and reinstall sglang-ampere"
    problems = [f"{t}: {err}" for t, err in native.get("targets", []) if err]
    if not native.get("marlin"):
        problems.append(f"'marlin' is not a MoE runner backend ({native.get('marlin_error', 'is_marlin() false')})")
    if not native.get("patched"):
        problems.append(f"{NATIVE_PATCH} is not in sglang_ampere.patches.PATCH_MODULES, so nothing lifts "
                        "Mxfp4MarlinMoEMethod's SM90/SM120 gate")
    if problems:
        return [fail("native checkpoint path", "native-path-broken", "; ".join(problems), fix)]
    gate = {True: f"its gate ({NATIVE_GATE!r}) is lifted by {NATIVE_PATCH}",
            False: "its SM90/SM120 gate is gone from this SGLang",
            None: "its gate was not read"}[native.get("gate")]
    return [ok("native checkpoint path", "native-path",
               f"{len(native.get('targets', []))} SGLang function(s) import (Marlin MXFP4 MoE: {gate}; FP8 "
               "Marlin W8A16; wo_a switch) and --moe-runner-backend marlin exists")]


def check_gpus(environ: Mapping[str, str], smi_output: str | None, gpu: str) -> tuple[list[Check], str | None]:
    """GPU listing and the preset that applies; returns the arch too (None if undecided)."""
    from sglang_ampere import gpus as gpus_mod
    from sglang_ampere.gpus import CPU_ARCH, KNOWN_ARCHES, PRESET_TARGETS

    if gpu == CPU_ARCH:      # as launch --gpu cpu: no GPU wanted, none looked for
        return [ok("gpus", "cpu-target", "--gpu cpu: no GPU wanted (SGLang's CPU engine with sglang-ampere's "
                   "torch stand-ins: tests and a first try, slow)"),
                ok("preset", "preset-from-flag", f"{CPU_ARCH} (from --gpu)")], CPU_ARCH
    checks = []
    found, why = gpus_mod.detect_gpus_or_reason(environ, smi_output)
    if found:
        checks.append(ok("gpus", "gpus", "; ".join(g.describe() for g in found)))
    else:
        checks.append(fail("gpus", "no-gpu", f"no GPU: {why}",
                           "serving needs an NVIDIA GPU (sm_80+) with its driver; "
                           "`launch --gpu sm86 --dry-run` still previews the command here, and "
                           "`--gpu cpu` serves on this CPU (slowly)"))
    if gpu != AUTO:
        if gpu not in PRESET_TARGETS:
            checks.append(fail("preset", "unknown-arch", f"unknown --gpu {gpu!r}",
                               f"use one of {', '.join(PRESET_TARGETS)}"))
            return checks, None
        checks.append(ok("preset", "preset-from-flag", f"{gpu} (from --gpu)"))
        return checks, gpu
    arches = sorted({g.arch for g in found})
    if len(arches) > 1:
        checks.append(fail("preset", "mixed-arches", f"mixed architectures: {gpus_mod.summarize(found)}",
                           "launch with --gpu ARCH, or restrict CUDA_VISIBLE_DEVICES to one kind of card"))
        return checks, None
    if not arches:
        return checks, None
    if arches[0] not in KNOWN_ARCHES:
        checks.append(fail("preset", "no-preset", f"{arches[0]} has no preset",
                           f"launch with --gpu one of {', '.join(KNOWN_ARCHES)} or --preset FILE"))
        return checks, None
    checks.append(ok("preset", "preset", f"{arches[0]} (env/{arches[0]}.toml)"))
    return checks, arches[0]


def check_target(environ: Mapping[str, str], arch: str | None) -> tuple[list[Check], str | None]:
    """``SGLANG_AMPERE_TARGET``: a line when it is set, and the preset the card then launches with."""
    from sglang_ampere import gpus as gpus_mod

    var = envvars.TARGET
    try:
        forced = gpus_mod.ampere_target(environ)
    except ValueError as exc:
        return [fail("target", "bad-target", str(exc), f"unset {var}, or set it to ampere")], arch
    if not forced or arch == gpus_mod.CPU_ARCH:    # cpu: its preset's value is checked with the environment
        return [], arch
    if arch is None:
        return [warn("target", "target-undecided", f"{var}=ampere, but no GPU architecture was decided",
                     "pass --gpu ARCH to see the preset it selects")], None
    stand_in = gpus_mod.preset_arch(arch, environ)
    if stand_in == arch:
        return [ok("target", "target-no-change",
                   f"{var}=ampere: {arch} takes the sm_80/sm_86 path anyway (no change)")], arch
    return [warn("target", "ampere-target",
                 f"{var}=ampere is on: this {arch} card takes the sm_80/sm_86 path (preset {stand_in}'s switches, "
                 f"sglang-ampere's sparse-MLA and indexer kernels built for {arch}, Marlin W8A16/W4A16), "
                 "to validate the Ampere code; slower than SGLang's own sm_90+ paths",
                 f"unset {var} to serve with SGLang's own paths on this card")], stand_in


def check_env_against_preset(arch: str, environ: Mapping[str, str], native: bool | None = None) -> list[Check]:
    """``native``: the checkpoint is the native one served below sm_90 (True), is not (False), or
    is unknown (None: no ``--model-path``)."""
    from sglang_ampere.envvars import FORK_VARS
    from sglang_ampere.launch.presets import load_builtin

    preset = load_builtin(arch)
    checks = []
    for e in preset.env:
        if e.name in environ and not envvars.same_value(e.name, environ[e.name], e.value):
            then = "launch refuses it" if e.required else "launch keeps your value over the preset's"
            checks.append(fail("environment", "env-contradicts-preset",
                               f"your {e.name}={environ[e.name]} contradicts preset {arch} ({e.value}: {e.reason})",
                               f"unset {e.name} ({then})"))
    for e in preset.native_env if native is not False else ():
        if e.name not in environ or envvars.same_value(e.name, environ[e.name], e.value):
            continue
        verdict = fail if (e.required and native) else warn
        what = ("launch refuses it with the native FP8/FP4 checkpoint" if e.required else
                "launch keeps your value over the preset's for the native FP8/FP4 checkpoint")
        checks.append(verdict("environment", "env-contradicts-native",
                              f"your {e.name}={environ[e.name]} contradicts preset {arch}'s [native] "
                              f"{e.value} ({e.reason}); {what}",
                              f"unset {e.name}" + ("" if native else " if you serve the native checkpoint")))
    if not checks:
        checks.append(ok("environment", "env-agrees", f"no variable contradicts preset {arch}"))
    for name, meaning in FORK_VARS.items():
        if name in environ:
            checks.append(warn("fork-era variable", "fork-variable", f"{name}={environ[name]}: {meaning}"))
    return checks


def check_jit_tools(environ: Mapping[str, str], arch: str | None, checkpoint: str | None = None) -> list[Check]:
    from sglang_ampere import jit_cache
    from sglang_ampere.gpus import CPU_ARCH
    from sglang_ampere.speculative import NONE

    if arch == CPU_ARCH:
        return [ok("JIT tools", "jit-not-needed", "the cpu target compiles no CUDA kernel: nvcc, the CUDA "
                   "headers and the JIT cache are not needed")]
    checks = []
    nvcc = shutil.which("nvcc", path=environ.get("PATH"))
    if nvcc is None:
        checks.append(fail("nvcc", "no-nvcc", "nvcc not on PATH; SGLang compiles its Marlin and DeepSeek-V4 "
                           "kernels with it at start-up, whichever sparse-MLA backend (torch or tilelang) "
                           "is chosen",
                           "install the CUDA toolkit (12.x or 13.x) and put its bin/ on PATH"))
    else:
        try:
            ver = subprocess.run([nvcc, "--version"], capture_output=True, text=True, timeout=60).stdout
            line = next((l for l in ver.splitlines() if "release" in l), ver.strip()[-60:])
        except (OSError, subprocess.TimeoutExpired) as exc:
            line = f"could not run: {exc}"
        checks.append(ok("nvcc", "nvcc", f"{nvcc}: {line.strip()}"))
        home = find_cuda_home(environ)
        if home is None:
            checks.append(fail("CUDA_HOME", "no-cuda-home", "no CUDA toolkit root with lib64/libcudart.so found",
                               "export CUDA_HOME=/usr/local/cuda-XX.Y (the toolkit root, not a wrapper's folder)"))
        elif not (environ.get("CUDA_HOME") or environ.get("CUDA_PATH")) and \
                os.path.dirname(os.path.dirname(nvcc)) != home:
            checks.append(warn("CUDA_HOME", "cuda-home-mismatch",
                               f"nvcc on PATH is not inside the toolkit ({home}); SGLang's JIT link step "
                               "would look in the wrong folder", f"export CUDA_HOME={home}"))
        else:
            checks.append(ok("CUDA_HOME", "cuda-home", home))
        if home is not None:
            checks += check_cuda_headers(home, environ)
    if arch is not None:
        cold = jit_cache.cold_cache_notes(arch, environ, checkpoint, speculative=NONE)
        if cold:   # launch notes it; here it is worth a warning
            checks.append(Check("jit cache", notes.warning(cold[0].code, cold[0].text)))
        else:
            which = f"the {checkpoint}" if checkpoint else "the dsv4_int and native"
            checks.append(ok("jit cache", "jit-warm", f"every JIT kernel {which} path needs without speculative "
                             f"decoding is built for {arch} in {jit_cache.cache_root(environ)} (MTP's: "
                             f"sglang-ampere warmup --gpu {arch} --list)"))
    return checks


def _nvcc_flag_dirs(environ: Mapping[str, str]) -> tuple[list[Path], list[Path]]:
    """The include folders in ``NVCC_PREPEND_FLAGS``/``NVCC_APPEND_FLAGS``: (searched before the
    toolkit's own headers: ``-I``; searched after them: ``-Xcompiler=-idirafter,DIR``)."""
    before, after = [], []
    for var in ("NVCC_PREPEND_FLAGS", "NVCC_APPEND_FLAGS"):
        words = shlex.split(environ.get(var, ""))
        for i, w in enumerate(words):
            if w == "-I" and i + 1 < len(words):
                before.append(Path(words[i + 1]))
            elif w.startswith("-I") and len(w) > 2:
                before.append(Path(w[2:]))
            host = w.removeprefix("-Xcompiler=") if w.startswith("-Xcompiler=") else (
                words[i + 1] if w == "-Xcompiler" and i + 1 < len(words) else "")
            parts = host.split(",")
            after += [Path(parts[j + 1]) for j, p in enumerate(parts[:-1]) if p == "-idirafter"]
    return before, after


def include_dirs(home: str, environ: Mapping[str, str]) -> list[Path]:
    """Where nvcc finds headers: the toolkit's include folders, the folders of
    ``NVCC_PREPEND_FLAGS``/``NVCC_APPEND_FLAGS`` (:func:`_nvcc_flag_dirs`), and the host compiler's
    ``CPATH``/``CPLUS_INCLUDE_PATH``."""
    root = Path(home)
    before, after = _nvcc_flag_dirs(environ)
    dirs = [root / "include", *sorted(root.glob("targets/*/include")), *before, *after]
    for var in ("CPATH", "CPLUS_INCLUDE_PATH"):
        dirs += [Path(d) for d in environ.get(var, "").split(os.pathsep) if d]
    return dirs


#: The header nvcc's generated host stub includes from the toolkit (its launch macros change
#: between releases: 13.0.88's ``__cudaLaunch`` takes two arguments, an older 13.0 wheel's one).
HOST_RUNTIME = Path("crt") / "host_runtime.h"


def shadowing_include_dirs(home: str, environ: Mapping[str, str]) -> list[Path]:
    """``-I`` folders that hold another CUDA's ``crt/host_runtime.h`` (e.g. an ``nvidia`` wheel's
    include folder): nvcc then takes it before its own and every JIT build fails to compile its
    host stub (measured here: nvcc 13.0.88 with the nvidia-cu13 wheel's include folder, "macro
    __cudaLaunch passed 2 arguments, but takes just 1")."""
    own = Path(home) / "include" / HOST_RUNTIME
    mine = own.read_bytes() if own.is_file() else None
    return [d for d in _nvcc_flag_dirs(environ)[0]
            if (d / HOST_RUNTIME).is_file() and (d / HOST_RUNTIME).read_bytes() != mine]


def _pip_header_dir(header: str) -> str | None:
    """A folder of this Python's ``nvidia-*`` wheels that holds ``header`` (e.g. the cuRAND wheel's)."""
    try:
        spec = importlib.util.find_spec("nvidia")
    except (ImportError, ValueError):
        return None
    for loc in (spec.submodule_search_locations or []) if spec else []:
        for hit in sorted(Path(loc).glob(f"*/include/{header}")):
            return str(hit.parent)
    return None


#: How to add a folder of headers behind the toolkit's own (a wheel's include folder also holds
#: CUDA's own headers, which ``-I`` would put before the toolkit's: :func:`shadowing_include_dirs`).
IDIRAFTER = "-Xcompiler=-idirafter,"


def check_cuda_headers(home: str, environ: Mapping[str, str]) -> list[Check]:
    """Each of :data:`JIT_HEADERS` must be where nvcc looks (see :func:`include_dirs`), and no
    ``-I`` folder may shadow the toolkit's own host-stub header."""
    dirs = include_dirs(home, environ)
    checks = [fail("CUDA headers", "header-shadowed",
                   f"{d} holds another CUDA's {HOST_RUNTIME}, which nvcc takes before the toolkit's ({home}): "
                   "every JIT build fails compiling its host stub (\"macro __cudaLaunch passed 2 arguments\")",
                   f"add it behind the toolkit's headers instead: '{IDIRAFTER}{d}' in place of '-I{d}' in "
                   "NVCC_APPEND_FLAGS/NVCC_PREPEND_FLAGS")
              for d in shadowing_include_dirs(home, environ)]
    for header, needed_by in JIT_HEADERS:
        found = next((d / header for d in dirs if (d / header).is_file()), None)
        if found is not None:
            checks.append(ok("CUDA headers", "header", f"{header}: {found}"))
            continue
        pip_dir = _pip_header_dir(header)
        hint = (f"; this Python's nvidia wheels have it: export NVCC_APPEND_FLAGS='{IDIRAFTER}{pip_dir}'"
                if pip_dir else f"; or put a folder holding it behind the toolkit's headers with "
                                f"NVCC_APPEND_FLAGS='{IDIRAFTER}<dir>'")
        package = "cuRAND development headers (e.g. libcurand-dev-XX-Y)" if header == "curand.h" \
            else "CUDA runtime development headers (e.g. cuda-cudart-dev-XX-Y)"
        checks.append(fail("CUDA headers", "header-missing",
                           f"{header} is not in the CUDA toolkit at {home} (looked in "
                           f"{', '.join(str(d) for d in dirs)}); needed by {needed_by}",
                           f"install the toolkit's {package}{hint}"))
    return checks


def check_model_dir(path: str, arch: str | None) -> tuple[list[Check], bool | None, str | None]:
    """The checkpoint's format and whether ``launch`` takes it with preset ``arch``; also whether
    it is the native checkpoint served below sm_90 (None when that cannot be decided), and the
    format whose JIT kernels the cache check looks for (None: both, e.g. when sglang-ampere does
    not serve this checkpoint here)."""
    from sglang_ampere import checkpoint_format as fmt
    from sglang_ampere.launch.errors import LaunchError
    from sglang_ampere.launch.model_dir import check_model
    from sglang_ampere.launch.presets import load_builtin

    try:
        found = fmt.detect(path)
    except fmt.CheckpointFormatError as exc:
        return [fail("checkpoint", "checkpoint-unreadable", str(exc),
                     "point --model-path at the checkpoint folder")], None, None
    what = {fmt.DSV4_INT: "dsv4_int (INT4 experts, INT8 dense)",
            fmt.NATIVE: f"native FP8/FP4 (quant_method fp8; routed experts {found.expert_dtype or 'not found'}"
                        f"{' = MXFP4' if found.mxfp4_experts else ''})"}.get(found.kind, f"quant_method "
                                                                                f"{found.quant_method!r}")
    if arch is None:
        return [warn("checkpoint", "checkpoint-unchecked",
                     f"{path}: {what}; no preset decided, so not checked against one", "pass --gpu ARCH")], None, None
    preset = load_builtin(arch)
    try:
        model = check_model(path, arch, preset)
    except LaunchError as exc:
        return [fail("checkpoint", "checkpoint-refused", f"{path}: {what}: {exc}",
                     "see the message: launch refuses this checkpoint on this GPU")], found.kind == fmt.NATIVE, None
    if model.native_path:
        adds = [" ".join(a.argv()) for a in preset.native_args] + [f"{e.name}={e.value}" for e in preset.native_env]
        detail = (f"{path}: {what}: served without conversion on {arch}; launch adds preset {arch}'s [native] "
                  f"settings: {', '.join(adds)}")
    else:
        detail = f"{path}: {what}: accepted on {arch}"
    return [ok("checkpoint", "checkpoint", detail)], model.native_path, model.served_format


def collect(environ: Mapping[str, str] | None = None, smi_output: str | None = None,
            gpu: str = AUTO, probe: dict | None = None, model_path: str | None = None) -> list[Check]:
    environ = dict(os.environ if environ is None else environ)
    checks = [check_sglang_version(environ), check_entry_point(environ)]
    checks += probe_checks(run_probe(environ) if probe is None else probe)
    gpu_checks, arch = check_gpus(environ, smi_output, gpu)
    checks += gpu_checks
    target_checks, preset_arch = check_target(environ, arch)
    checks += target_checks
    native = served = None
    if model_path is not None:
        model_checks, native, served = check_model_dir(model_path, preset_arch)
        checks += model_checks
    if preset_arch is not None:
        checks += check_env_against_preset(preset_arch, environ, native)
    checks += check_jit_tools(environ, arch, served)
    return checks


# ----------------------------------------------------------------------------- command


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print the checks as JSON")
    add_gpu_flag(parser, AUTO, "preset to check the environment against: a GPU architecture, or cpu for the "
                 "CPU target (default: auto, from nvidia-smi)", auto=True)
    parser.add_argument("--model-path", metavar="DIR",
                        help="also check this checkpoint: its format (dsv4_int or native FP8/FP4) and whether "
                             "launch takes it on this GPU")


def render(checks: list[Check]) -> str:
    tag = {OK: "  OK", WARN: "WARN", FAIL: "FAIL"}
    lines = []
    for c in checks:
        lines.append(f"[{tag[c.status]}] {c.name}: {c.detail}")
        if c.status != OK and c.fix:
            lines.append(f"       fix: {c.fix}")
    failed = sum(c.status == FAIL for c in checks)
    lines.append(f"{failed} failure(s)" if failed else "all checks passed")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    checks = collect(gpu=args.gpu, model_path=getattr(args, "model_path", None))
    failed = any(c.status == FAIL for c in checks)
    if args.json:
        print(json.dumps({"ok": not failed, "checks": [c.as_dict() for c in checks]}, indent=2))
    else:
        print(render(checks))
    return 1 if failed else 0
