"""``sglang-ampere launch``: preset + flag translation + checks, then exec of SGLang's server.

Precedence (documented in ``--help`` and tested):

* environment: ``--env KEY=VALUE`` (and the ``--nsa-*-backend`` flags, which are shorthand for
  ``--env SGLANG_AMPERE_*_BACKEND=...``) > the caller's environment > the preset's ``[[env]]``;
* server arguments: the user's SGLang arguments > the preset's ``[[arg]]`` defaults.

Everything that is not a launcher option is handed to ``python -m sglang.launch_server``
unchanged (either after ``--`` or mixed in with the launcher options).

Without a GPU, ``launch`` refuses to run unless ``--dry-run`` is given with an explicit ``--gpu``;
``launch --gpu ARCH -- --help`` is the one other exception (it only prints SGLang's help, so the
model and topology checks are skipped too).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence

from sglang_ampere import QUANT_METHOD, envvars

from . import gpus as gpus_mod
from .presets import KNOWN_ARCHES, Preset, PresetError, load_builtin, load_file

PREFILL_VAR = "SGLANG_AMPERE_PREFILL_BACKEND"
DECODE_VAR = "SGLANG_AMPERE_DECODE_BACKEND"
NSA_CHOICES = ("torch", "tilelang")
HACK_VAR = "SGLANG_HACK_FLASHMLA_BACKEND"

#: Fork-era variables users still export, and what each does with SGLang 0.5.23 on CUDA
#: (checked against the installed source; see tests/test_launch_fork.py).
FORK_VARS: dict[str, str] = {
    HACK_VAR: "SGLang 0.5.23 reads it only on ROCm; here =torch (or =tilelang) selects the "
              "sglang-ampere sparse-MLA backend for prefill and decode",
    "SGLANG_APPLY_CONFIG_BACKUP": "does nothing: SGLang 0.5.23 never reads it (safe to drop)",
    "SGLANG_OPT_FP8_WO_A_GEMM": "affects only the native FP8 checkpoint (DeepGEMM FP8 wo_a einsum); "
                                "a dsv4_int wo_a is BF16 after load, so it changes nothing here",
    "SGLANG_OPT_FUSE_WQA_WKV": "read by SGLang: 1 fuses wq_a+wkv into one GEMM; dsv4_int loads either way "
                               "unless the two differ in dtype, and the presets set 0",
    "SGLANG_FP8_PAGED_MQA_LOGITS_TORCH": "read by SGLang: 1 computes indexer logits in torch instead "
                                         "of DeepGEMM (Hopper-only); the Ampere/Ada presets set 1",
}

#: SGLang server flags the launcher reads (never consumes), with their aliases.
_SERVER_FLAGS = {
    "model_path": ("--model-path", "--model"),
    "tp_size": ("--tp-size", "--tensor-parallel-size"),
    "pp_size": ("--pp-size", "--pipeline-parallel-size"),
    "dp_size": ("--dp-size", "--data-parallel-size"),
    "nnodes": ("--nnodes",),
    "node_rank": ("--node-rank",),
    "dist_init_addr": ("--dist-init-addr", "--nccl-init-addr"),
}
_HELP_FLAGS = ("-h", "--help")
_ENV_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class LaunchError(Exception):
    """A problem the user must fix; the message says how. Exit code 2."""


@dataclass(frozen=True)
class EnvChange:
    name: str
    old: str | None        # caller's value (None = unset)
    new: str
    source: str            # "preset sm86", "--env", "--nsa-prefill-backend", ...
    reason: str


@dataclass
class Plan:
    arch: str
    preset: Preset
    gpus: list                         # list[gpus.Gpu] visible on this node
    env: dict[str, str]                # the full environment SGLang gets
    changes: list[EnvChange]           # what differs from the caller's environment
    argv: list[str]                    # python -m sglang.launch_server ...
    node_argvs: list[list[str]] = field(default_factory=list)   # --dry-run with --nnodes N
    notes: list[str] = field(default_factory=list)
    help_only: bool = False
    preset_args_used: list = field(default_factory=list)     # ArgEntry added to argv
    preset_args_kept: list = field(default_factory=list)     # ArgEntry the user's value overrode


# ----------------------------------------------------------------------------- arguments


def make_parser(prog: str = "sglang-ampere launch") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog,
        allow_abbrev=False,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        usage=f"{prog} [options] [--] <sglang server args>",
        description=(
            "Start SGLang's OpenAI-compatible server (python -m sglang.launch_server) for a\n"
            "dsv4_int DeepSeek-V4-Flash checkpoint with the preset for this GPU.\n"
            "Arguments this launcher does not know (or everything after --) go to SGLang."),
        epilog=(
            "precedence:\n"
            "  environment: --env KEY=VALUE (and --nsa-*-backend) > your environment > preset\n"
            "  server args: your SGLang arguments > preset defaults\n"
            "fork-era names: --nsa-prefill-backend/--nsa-decode-backend are taken here (SGLang 0.5.23\n"
            "  has no such flags); SGLANG_HACK_FLASHMLA_BACKEND=torch selects the torch sparse-MLA\n"
            "  path for both phases.\n"
            "examples:\n"
            f"  {prog} --model-path /models/DeepSeek-V4-Flash-dsv4_int --pp-size 12\n"
            f"  {prog} --gpu sm86 --dry-run --model-path DIR --pp-size 4 --nnodes 3 \\\n"
            "      --dist-init-addr 10.0.0.1:5000"),
    )
    p.add_argument("--gpu", default="auto", metavar="ARCH",
                   help=f"auto (read nvidia-smi) or one of {', '.join(KNOWN_ARCHES)} (default: auto)")
    p.add_argument("--preset", metavar="FILE", help="use this preset TOML file instead of env/<arch>.toml")
    p.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                   help="set an environment variable for SGLang (repeatable; beats everything)")
    p.add_argument("--nsa-prefill-backend", choices=NSA_CHOICES,
                   help=f"sparse-MLA prefill implementation below sm_90 (sets {PREFILL_VAR})")
    p.add_argument("--nsa-decode-backend", choices=NSA_CHOICES,
                   help=f"sparse-MLA decode implementation below sm_90 (sets {DECODE_VAR})")
    p.add_argument("--num-gpus", type=int, metavar="N",
                   help="GPUs per node for the topology check (default: the GPUs visible here)")
    p.add_argument("--dry-run", action="store_true",
                   help="print the environment changes and the exact command instead of running it")
    return p


def split_argv(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
    """Launcher options and the SGLang arguments (order kept)."""
    argv = list(argv)
    tail: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, tail = argv[:cut], argv[cut + 1:]
    opts, unknown = make_parser().parse_known_args(argv)
    return opts, unknown + tail


def _flag_values(args: Sequence[str], names: Sequence[str]) -> list[tuple[int, str | None]]:
    """(position, value) of every occurrence of a flag in ``--f v`` or ``--f=v`` form."""
    found = []
    for i, a in enumerate(args):
        for n in names:
            if a == n:
                found.append((i, args[i + 1] if i + 1 < len(args) else None))
            elif a.startswith(n + "="):
                found.append((i, a[len(n) + 1:]))
    return found


def _server_value(args: Sequence[str], key: str) -> str | None:
    hits = _flag_values(args, _SERVER_FLAGS[key])
    if not hits:
        return None
    value = hits[-1][1]
    if value is None or value.startswith("--"):
        raise LaunchError(f"{_SERVER_FLAGS[key][0]} needs a value")
    return value


def _server_int(args: Sequence[str], key: str, default: int) -> int:
    value = _server_value(args, key)
    if value is None:
        return default
    try:
        n = int(value)
    except ValueError:
        raise LaunchError(f"{_SERVER_FLAGS[key][0]} {value!r} is not an integer") from None
    if n < (0 if key == "node_rank" else 1):
        raise LaunchError(f"{_SERVER_FLAGS[key][0]} must be {'>= 0' if key == 'node_rank' else '>= 1'}, got {n}")
    return n


def _has_flag(args: Sequence[str], flag: str) -> bool:
    return any(a == flag or a.startswith(flag + "=") for a in args)


def _take_nsa_flags(server_args: list[str], opts: argparse.Namespace) -> list[str]:
    """Remove ``--nsa-*-backend`` that ended up among the SGLang arguments (after ``--``)."""
    out, i = [], 0
    while i < len(server_args):
        a = server_args[i]
        for flag, attr in (("--nsa-prefill-backend", "nsa_prefill_backend"),
                           ("--nsa-decode-backend", "nsa_decode_backend")):
            if a == flag or a.startswith(flag + "="):
                if a == flag:
                    value = server_args[i + 1] if i + 1 < len(server_args) else None
                    i += 2
                else:
                    value = a.split("=", 1)[1]
                    i += 1
                if value not in NSA_CHOICES:
                    raise LaunchError(f"{flag} must be one of {', '.join(NSA_CHOICES)} (got {value!r})")
                setattr(opts, attr, value)
                break
        else:
            out.append(a)
            i += 1
    return out


def parse_env_overrides(items: Sequence[str]) -> dict[str, str]:
    env: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not _ENV_KEY.match(key):
            raise LaunchError(
                f"--env {item!r} is not KEY=VALUE with KEY a variable name "
                "(write e.g. --env SGLANG_OPT_USE_TOPK_V2=0; quote values with spaces)")
        env[key] = value
    return env


# ----------------------------------------------------------------------------- checks


def resolve_arch(opts: argparse.Namespace, environ: Mapping[str, str], smi_output: str | None,
                 need_gpu: bool) -> tuple[str, list]:
    """The preset architecture and the GPUs visible on this node."""
    gpu = (opts.gpu or "auto").lower()
    if gpu != "auto" and gpu not in KNOWN_ARCHES:
        raise LaunchError(f"unknown --gpu {opts.gpu!r}; known: auto, {', '.join(KNOWN_ARCHES)}")
    found, why_none = gpus_mod.detect_gpus_or_reason(environ, smi_output)
    if gpu == "auto":
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


def _arch_number(arch: str) -> int:
    return int(arch[2:])


def check_model(server_args: Sequence[str], arch: str) -> tuple[str, list[str]]:
    """The model directory (validated) and notes about it."""
    path = _server_value(server_args, "model_path")
    if path is None:
        raise LaunchError("pass --model-path DIR, a dsv4_int checkpoint "
                          "(make one with: sglang-ampere convert SRC DST)")
    p = Path(path).expanduser()
    if not p.exists():
        raise LaunchError(f"--model-path {path}: no such directory. The launcher needs a local "
                          "checkpoint; download it first (e.g. huggingface-cli download REPO --local-dir DIR)")
    cfg_file = p / "config.json"
    if not cfg_file.is_file():
        raise LaunchError(f"--model-path {path}: no config.json there; point it at the checkpoint "
                          "directory (the one holding config.json and *.safetensors)")
    try:
        cfg = json.loads(cfg_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise LaunchError(f"{cfg_file}: unreadable JSON ({exc})") from exc
    qcfg = cfg.get("quantization_config") if isinstance(cfg, dict) else None
    method = qcfg.get("quant_method") if isinstance(qcfg, dict) else None
    notes = []
    archs = cfg.get("architectures") or [] if isinstance(cfg, dict) else []
    if "DeepseekV4ForCausalLM" not in archs:
        notes.append(f"note: {cfg_file} declares architectures={archs}, not DeepseekV4ForCausalLM; "
                     "the presets are tuned for DeepSeek-V4-Flash")
    if method == QUANT_METHOD:
        return str(p), notes
    if method in ("fp8", "mxfp4") and _arch_number(arch) >= 90:
        notes.append(f"note: {path} is the native {method} checkpoint; on {arch} it runs on SGLang's "
                     "own kernels (the dsv4_int path is not used)")
        return str(p), notes
    if method in ("fp8", "mxfp4"):
        raise LaunchError(
            f"{path} is the native FP8/FP4 checkpoint (quant_method={method!r}), which needs sm_90+; "
            f"{arch} has no FP8/FP4 tensor cores. Requantize it once: "
            f"sglang-ampere convert {shlex.quote(str(p))} DST, then launch with --model-path DST")
    raise LaunchError(
        f"{cfg_file}: quantization_config.quant_method is {method!r}, expected {QUANT_METHOD!r}. "
        "Make a dsv4_int checkpoint with: sglang-ampere convert SRC DST")


@dataclass(frozen=True)
class Topology:
    tp: int
    pp: int
    dp: int
    nnodes: int
    node_rank: int | None
    dist_init_addr: str | None

    @property
    def total(self) -> int:
        return self.tp * self.pp * self.dp


def check_topology(server_args: Sequence[str], local_gpus: int | None) -> tuple[Topology, list[str]]:
    topo = Topology(
        tp=_server_int(server_args, "tp_size", 1),
        pp=_server_int(server_args, "pp_size", 1),
        dp=_server_int(server_args, "dp_size", 1),
        nnodes=_server_int(server_args, "nnodes", 1),
        node_rank=(_server_int(server_args, "node_rank", 0)
                   if _server_value(server_args, "node_rank") is not None else None),
        dist_init_addr=_server_value(server_args, "dist_init_addr"),
    )
    # `--dp-size N --enable-dp-attention` is the deprecated spelling of --attn-dp-size N
    # (attention DP inside the TP group, no extra GPUs); plain --dp-size N is N replicas.
    replicas = 1 if _has_flag(server_args, "--enable-dp-attention") else topo.dp
    total = topo.tp * topo.pp * replicas
    arith = f"--pp-size {topo.pp} x --tp-size {topo.tp}" + (f" x --dp-size {replicas}" if replicas > 1 else "")
    notes = []
    if topo.nnodes > 1 and replicas > 1:
        raise LaunchError(f"--dp-size {replicas} with --nnodes {topo.nnodes}: SGLang 0.5.23 runs data-parallel "
                          "replicas on one node only; use --attn-dp-size across nodes, or one launch per node")
    if total % topo.nnodes:
        raise LaunchError(f"{arith} = {total} GPUs cannot be split over --nnodes {topo.nnodes} "
                          f"({total} / {topo.nnodes} is not whole); make pp x tp a multiple of the node count")
    per_node = total // topo.nnodes
    node_txt = f" / --nnodes {topo.nnodes} = {per_node} per node" if topo.nnodes > 1 else ""
    if local_gpus is not None:
        if per_node > local_gpus:
            raise LaunchError(f"{arith} = {total} GPUs{node_txt}, but this node has {local_gpus} "
                              f"GPU(s). Lower the sizes, add nodes with --nnodes, or set --num-gpus if "
                              "the other nodes differ")
        if per_node < local_gpus:
            notes.append(f"note: {arith} = {total}{node_txt} uses {per_node} of the {local_gpus} GPUs on this node")
    if topo.nnodes > 1:
        if not topo.dist_init_addr:
            raise LaunchError(f"--nnodes {topo.nnodes} needs --dist-init-addr HOST:PORT "
                              "(the address of node 0, reachable from every node)")
        if topo.node_rank is not None and topo.node_rank >= topo.nnodes:
            raise LaunchError(f"--node-rank {topo.node_rank} is out of range for --nnodes {topo.nnodes} "
                              f"(0..{topo.nnodes - 1})")
    elif topo.node_rank not in (None, 0):
        raise LaunchError(f"--node-rank {topo.node_rank} without --nnodes: a single node is rank 0")
    return topo, notes


# ----------------------------------------------------------------------------- environment


def resolve_env(preset: Preset, environ: Mapping[str, str], overrides: Mapping[str, str],
                opts: argparse.Namespace) -> tuple[dict[str, str], list[EnvChange], list[str]]:
    """Apply preset < caller < --env, then the sparse-MLA backend selection."""
    env = dict(environ)
    notes: list[str] = []
    pending: dict[str, tuple[str, str, str]] = {}    # name -> (value, source, reason)
    label = f"preset {preset.source}"
    for e in preset.env:
        if e.name in environ:
            if environ[e.name] != e.value:
                notes.append(f"note: keeping your {e.name}={environ[e.name]} over {label}'s "
                             f"{e.value} ({e.reason})")
            continue
        pending[e.name] = (e.value, label, e.reason)
    for k, v in overrides.items():
        pending[k] = (v, "--env", "set on the command line")

    # Sparse-MLA backends: --nsa flag > --env SGLANG_AMPERE_* > --env HACK > caller's > caller's HACK > preset.
    def from_hack(source_env: Mapping[str, str]) -> str | None:
        v = source_env.get(HACK_VAR)
        return v if v in NSA_CHOICES else None

    for var, flag, attr in ((PREFILL_VAR, "--nsa-prefill-backend", "nsa_prefill_backend"),
                            (DECODE_VAR, "--nsa-decode-backend", "nsa_decode_backend")):
        flag_value = getattr(opts, attr)
        if flag_value is not None:
            if var in overrides and overrides[var] != flag_value:
                raise LaunchError(f"{flag} {flag_value} contradicts --env {var}={overrides[var]}; give one")
            pending[var] = (flag_value, flag, "fork-era flag translated by the launcher")
        elif var in overrides:
            pass
        elif from_hack(overrides):
            pending[var] = (from_hack(overrides), f"--env {HACK_VAR}", "fork-era variable translated")
        elif var in environ:
            pending.pop(var, None)
        elif from_hack(environ):
            pending[var] = (from_hack(environ), HACK_VAR, "fork-era variable translated")
        value = pending.get(var, (env.get(var),))[0]
        choices = envvars.VARS[var].choices
        if value is not None and choices and value not in choices:
            raise LaunchError(f"{var}={value!r} is not one of {', '.join(choices)}")

    for name in FORK_VARS:
        if name in overrides or name in environ:
            value = overrides.get(name, environ.get(name))
            line = f"note: {name}={value}: {FORK_VARS[name]}"
            if name == HACK_VAR and value not in NSA_CHOICES:
                line = (f"note: {name}={value}: SGLang 0.5.23 reads it only on ROCm, so it does nothing "
                        "here; use --nsa-prefill-backend/--nsa-decode-backend {torch,tilelang}")
            notes.append(line)

    changes = []
    for name, (value, source, reason) in pending.items():
        old = environ.get(name)
        env[name] = value
        if old != value:
            changes.append(EnvChange(name, old, value, source, reason))
    return env, changes, notes


# ----------------------------------------------------------------------------- plan


def build_plan(argv: Sequence[str], environ: Mapping[str, str] | None = None,
               smi_output: str | None = None, python: str | None = None) -> Plan:
    """Everything ``launch`` decides, without side effects. Raises :class:`LaunchError`."""
    environ = dict(os.environ if environ is None else environ)
    opts, server_args = split_argv(argv)
    server_args = _take_nsa_flags(server_args, opts)
    overrides = parse_env_overrides(opts.env)
    help_only = any(a in _HELP_FLAGS for a in server_args)
    if opts.num_gpus is not None and opts.num_gpus < 1:
        raise LaunchError("--num-gpus must be >= 1")

    arch, found = resolve_arch(opts, environ, smi_output, need_gpu=not (opts.dry_run or help_only))
    try:
        preset = load_file(opts.preset) if opts.preset else load_builtin(arch)
    except PresetError as exc:
        raise LaunchError(str(exc)) from exc

    notes: list[str] = []
    if opts.gpu != "auto" and found and {g.arch for g in found} != {arch}:
        notes.append(f"note: --gpu {arch} chosen, but this node has {gpus_mod.summarize(found)}")
    if preset.min_memory_gib and found:
        small = [g for g in found if g.memory_gib + 1 < preset.min_memory_gib]
        if small:
            notes.append(f"note: preset {preset.source} assumes {preset.min_memory_gib} GiB cards; "
                         f"{small[0].name} has {small[0].memory_gib:.0f} GiB (lower --mem-fraction-static "
                         "or --context-length if loading runs out of memory)")

    topo = None
    if not help_only:
        _, model_notes = check_model(server_args, arch)
        notes += model_notes
        local = opts.num_gpus if opts.num_gpus is not None else (len(found) or None)
        topo, topo_notes = check_topology(server_args, local)
        notes += topo_notes

    env, changes, env_notes = resolve_env(preset, environ, overrides, opts)
    notes += env_notes

    user_args = list(server_args)
    preset_args: list[str] = []
    used, kept = [], []
    for a in preset.args:
        if _has_flag(user_args, a.flag):
            kept.append(a)
        else:
            used.append(a)
            preset_args += a.argv()
    python = python or sys.executable
    base = [python, "-m", "sglang.launch_server"]
    argv_out = base + user_args + preset_args

    node_argvs: list[list[str]] = []
    if topo is not None and topo.nnodes > 1:
        if topo.node_rank is None:
            if not opts.dry_run:
                raise LaunchError(f"--nnodes {topo.nnodes} needs --node-rank on each node "
                                  f"(0 on the node at --dist-init-addr, then 1..{topo.nnodes - 1}); "
                                  "--dry-run prints every node's command")
            for r in range(topo.nnodes):
                node_argvs.append(base + user_args + ["--node-rank", str(r)] + preset_args)
        else:
            for r in range(topo.nnodes):
                node_argvs.append(base + _replace_node_rank(user_args, r) + preset_args)

    plan = Plan(arch=arch, preset=preset, gpus=found, env=env, changes=changes, argv=argv_out,
                node_argvs=node_argvs, notes=notes, help_only=help_only,
                preset_args_used=used, preset_args_kept=kept)
    if not help_only:
        plan.notes += _jit_cache_notes(arch, env)
    return plan


def _replace_node_rank(args: Sequence[str], rank: int) -> list[str]:
    out, i = [], 0
    args = list(args)
    while i < len(args):
        a = args[i]
        if a == "--node-rank":
            out += ["--node-rank", str(rank)]
            i += 2
        elif a.startswith("--node-rank="):
            out.append(f"--node-rank={rank}")
            i += 1
        else:
            out.append(a)
            i += 1
    return out


def _jit_cache_notes(arch: str, env: Mapping[str, str]) -> list[str]:
    try:
        from sglang_ampere import warmup
    except ImportError:  # pragma: no cover - warmup ships with the package
        return []
    return warmup.cold_cache_notes(arch, env)


# ----------------------------------------------------------------------------- output


def shell_command(argv: Sequence[str], env_changes: Sequence[EnvChange] = ()) -> str:
    """A command ready to paste into a POSIX shell (one assignment per line)."""
    lines = [f"{c.name}={shlex.quote(c.new)}" for c in env_changes]
    lines.append(" ".join(shlex.quote(a) for a in argv))
    return " \\\n  ".join(lines)


def format_plan(plan: Plan) -> str:
    out = []
    gpu_txt = gpus_mod.summarize(plan.gpus) if plan.gpus else "no GPU detected"
    desc = f" ({plan.preset.description})" if plan.preset.description else ""
    out.append(f"# sglang-ampere launch: preset {plan.preset.source}{desc}")
    out.append(f"# GPUs on this node: {gpu_txt}")
    if plan.changes:
        out.append("# environment changes (variable=value  [source] reason):")
        for c in plan.changes:
            was = "unset" if c.old is None else f"was {c.old}"
            out.append(f"#   {c.name}={c.new}  [{c.source}; {was}] {c.reason}")
    else:
        out.append("# environment changes: none")
    if plan.preset_args_used or plan.preset_args_kept:
        out.append("# preset server arguments (yours win):")
        for a in plan.preset_args_used:
            out.append(f"#   {' '.join(a.argv())}  {a.reason}")
        for a in plan.preset_args_kept:
            out.append(f"#   {a.flag}: your value kept over the preset's {a.value}")
    if _arch_number(plan.arch) < 90:
        out.append(f"# sparse MLA below sm_90: prefill={plan.env.get(PREFILL_VAR, envvars.VARS[PREFILL_VAR].default)} "
                   f"decode={plan.env.get(DECODE_VAR, envvars.VARS[DECODE_VAR].default)} "
                   "(--nsa-prefill-backend/--nsa-decode-backend {torch,tilelang} to change)")
    for n in plan.notes:
        out.append(f"# {n}")
    if plan.node_argvs:
        for r, argv in enumerate(plan.node_argvs):
            out.append(f"# node {r} of {len(plan.node_argvs)}:")
            out.append(shell_command(argv, plan.changes))
    else:
        out.append(shell_command(plan.argv, plan.changes))
    return "\n".join(out) + "\n"


def dry_run_command(model_path: str | os.PathLike, gpu: str = "sm86", extra_args: Sequence[str] = ()) -> str:
    """The ``sglang-ampere launch --dry-run`` command line for a checkpoint (for ``quickstart``).

    ``extra_args`` are SGLang server arguments (e.g. ``("--pp-size", "12")``); the result is
    quoted for a POSIX shell.
    """
    parts = ["sglang-ampere", "launch", "--gpu", gpu, "--dry-run", "--model-path", str(model_path), *extra_args]
    return " ".join(shlex.quote(p) for p in parts)


# ----------------------------------------------------------------------------- entry points


def main(argv: Sequence[str], environ: Mapping[str, str] | None = None,
         execvpe: Callable[..., object] = os.execvpe, stdout=None, stderr=None) -> int:
    """Run the launcher. Returns 2 on a user error; otherwise does not return (exec)."""
    stdout = stdout or sys.stdout
    stderr = stderr or sys.stderr
    argv = list(argv)
    try:
        plan = build_plan(argv, environ)
        dry = split_argv(argv)[0].dry_run
    except LaunchError as exc:
        print(f"sglang-ampere launch: error: {exc}", file=stderr)
        return 2
    text = format_plan(plan)
    if dry:
        stdout.write(text)
        stdout.flush()
        return 0
    if not plan.help_only:
        stderr.write(text)
        stderr.flush()
    execvpe(plan.argv[0], plan.argv, plan.env)
    return 0  # reached only with a stand-in execvpe (tests)
