"""Rendering for humans: the ``--dry-run`` text and paste-ready shell commands."""

from __future__ import annotations

import os
import shlex
from typing import TYPE_CHECKING, Sequence

from sglang_ampere import envvars
from sglang_ampere import gpus as gpus_mod

from .model_dir import below_sm90
from .resolve import ampere_target_line

if TYPE_CHECKING:
    from .resolve import EnvChange
    from .spec import LaunchSpec


def shell_command(argv: Sequence[str], env_changes: Sequence[EnvChange] = ()) -> str:
    """A command ready to paste into a POSIX shell (one assignment per line)."""
    lines = [f"{c.name}={shlex.quote(c.new)}" for c in env_changes]
    lines.append(" ".join(shlex.quote(a) for a in argv))
    return " \\\n  ".join(lines)


def _setting(spec: LaunchSpec, var: str) -> str:
    return spec.env.get(var, envvars.VARS[var].default)


def format_spec(spec: LaunchSpec) -> str:
    """The ``--dry-run`` text (also written to stderr before the exec)."""
    out = []
    gpu_txt = gpus_mod.summarize(spec.gpus) if spec.gpus else "no GPU detected"
    desc = f" ({spec.preset.description})" if spec.preset.description else ""
    out.append(f"# sglang-ampere launch: preset {spec.preset.source}{desc}")
    out.append(f"# GPUs on this node: {gpu_txt}")
    target = ampere_target_line(spec.card_arch or spec.arch, spec.arch)
    if target:
        out.append(f"# {target}")
    if spec.changes:
        out.append("# environment changes (variable=value  [source] reason):")
        for c in spec.changes:
            was = "unset" if c.old is None else f"was {c.old}"
            out.append(f"#   {c.name}={c.new}  [{c.source}; {was}] {c.reason}")
    else:
        out.append("# environment changes: none")
    if spec.preset_args_used or spec.preset_args_kept:
        out.append("# preset server arguments (yours win, on the command line or in --config):")
        for a in spec.preset_args_used:
            tag = "[native] " if a in spec.preset.native_args else ""
            out.append(f"#   {' '.join(a.argv())}  {tag}{a.reason}")
        for a in spec.preset_args_kept:
            out.append(f"#   {a.flag}: your value kept over the preset's {a.value}")
    if below_sm90(spec.arch):
        out.append(f"# sparse MLA below sm_90: prefill={_setting(spec, envvars.PREFILL_BACKEND)} "
                   f"decode={_setting(spec, envvars.DECODE_BACKEND)} "
                   "(--nsa-prefill-backend/--nsa-decode-backend {torch,tilelang} to change)")
        out.append(f"# C4 indexer below sm_90: {_setting(spec, envvars.INDEXER_BACKEND)} "
                   "(--nsa-indexer-backend {torch,tilelang} to change)")
    for flag, value, reason in spec.spec_args_used:
        out.append(f"# speculative: {flag} {value}  {reason}")
    for flag, value, reason in spec.swa_args_used:
        out.append(f"# SWA pool: {flag} {value}  {reason}")
    for flag, value, reason in spec.mem_args_used:
        out.append(f"# memory plan: {flag} {value}  {reason}")
    if spec.stage_table:
        out += [ln if ln.startswith("#") else "# " + ln for ln in spec.stage_table.rstrip("\n").splitlines()]
    for n in spec.notes:
        out.append(f"# {n}")
    if spec.node_argvs:
        for r, argv in enumerate(spec.node_argvs):
            out.append(f"# node {r} of {len(spec.node_argvs)}:")
            out.append(shell_command(argv, spec.changes))
    else:
        out.append(shell_command(spec.argv, spec.changes))
    return "\n".join(out) + "\n"


def dry_run_command(model_path: str | os.PathLike, gpu: str = "sm86", extra_args: Sequence[str] = ()) -> str:
    """The ``sglang-ampere launch --dry-run`` command line for a checkpoint (for ``quickstart``).

    ``extra_args`` are SGLang server arguments (e.g. ``("--pp-size", "12")``); the result is
    quoted for a POSIX shell.
    """
    parts = ["sglang-ampere", "launch", "--gpu", gpu, "--dry-run", "--model-path", str(model_path), *extra_args]
    return " ".join(shlex.quote(p) for p in parts)
