"""``sglang-ampere launch``: the launch spec (preset + flag translation + checks), then exec of SGLang's server.

The pieces, each testable alone:

* :mod:`.argv`      the command line, parsed once: launcher options, then SGLang's own parser
                    and ``--config`` merge for the server arguments;
* :mod:`.resolve`   which preset applies, the environment, the server defaults the preset fills;
* :mod:`.model_dir` the checkpoint folder; :mod:`.topology` pp x tp (x dp) against GPUs x nodes;
* :mod:`.spec`      the :class:`~.spec.LaunchSpec`, what this module decides;
* :mod:`.render`    the ``--dry-run`` text; this module builds the spec and execs.

Precedence (documented in ``--help`` and tested): environment ``--env`` (and ``--nsa-*-backend``)
> the caller's environment > the preset; server arguments: the user's (command line or ``--config``
YAML) > the preset's defaults.

Without a GPU, ``launch`` refuses to run unless ``--dry-run`` is given with an explicit ``--gpu``;
``launch --gpu ARCH -- --help`` is the one other exception (it only prints SGLang's help, so the
server arguments, model and topology are not checked).
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Callable, Mapping, Sequence

from sglang_ampere import gpus as gpus_mod

from . import mem_fraction, swa_pool
from .argv import parse_env_overrides, parse_server_args, split_argv, wants_help
from .errors import LaunchError
from .layer_split import VAR as PARTITION_VAR
from .layer_split import split_layers
from .model_dir import check_model
from .presets import Preset, PresetError, load_builtin, load_file
from .render import dry_run_command, format_spec, shell_command
from .resolve import EnvChange, add_cpu_site, add_cpu_threads, fill_server_args, resolve_arch, resolve_env, target_arch
from .spec import LaunchSpec
from .speculative import check_draft_source, pp_spec_env, speculative_args, validate
from .topology import check_topology, topology_of, with_node_rank

__all__ = ["EnvChange", "LaunchError", "LaunchSpec", "build_spec", "dry_run_command", "format_spec", "main",
           "resolve_arch", "shell_command", "split_argv"]


def _load_preset(opts: argparse.Namespace, arch: str) -> Preset:
    try:
        return load_file(opts.preset) if opts.preset else load_builtin(arch)
    except PresetError as exc:
        raise LaunchError(str(exc)) from exc


def _gpu_notes(opts: argparse.Namespace, arch: str, found: list, preset: Preset) -> list[str]:
    notes = []
    if opts.gpu != "auto" and found and {g.arch for g in found} != {arch}:
        notes.append(f"note: --gpu {arch} chosen, but this node has {gpus_mod.summarize(found)}")
    if preset.min_memory_gib and found:
        small = [g for g in found if g.memory_gib + 1 < preset.min_memory_gib]
        if small:
            notes.append(f"note: preset {preset.source} assumes {preset.min_memory_gib} GiB cards; "
                         f"{small[0].name} has {small[0].memory_gib:.0f} GiB (lower --mem-fraction-static "
                         "or --context-length if loading runs out of memory)")
    return notes


def build_spec(argv: Sequence[str], environ: Mapping[str, str] | None = None,
               smi_output: str | None = None, python: str | None = None) -> LaunchSpec:
    """Everything ``launch`` decides, without side effects. Raises :class:`LaunchError`."""
    environ = dict(os.environ if environ is None else environ)
    opts, cli = split_argv(argv)
    overrides = parse_env_overrides(opts.env)
    help_only = wants_help(cli)
    if opts.num_gpus is not None and opts.num_gpus < 1:
        raise LaunchError("--num-gpus must be >= 1")
    server = None if help_only else parse_server_args(cli)

    card_arch, found = resolve_arch(opts, environ, smi_output, need_gpu=not (opts.dry_run or help_only))
    arch = target_arch(card_arch, environ, overrides)       # sm80 for sm_90+ under SGLANG_AMPERE_TARGET=ampere
    preset = _load_preset(opts, arch)
    notes = _gpu_notes(opts, card_arch, found, preset)

    topo = None
    model = None
    if server is not None:
        model = check_model(server.value("model_path"), arch, preset)
        notes += model.notes
        topo = topology_of(server)
        local = opts.num_gpus if opts.num_gpus is not None else (len(found) or None)
        notes += check_topology(topo, local)

    native = model is not None and model.native_path
    env, changes, env_notes = resolve_env(preset, environ, overrides, opts, native=native)
    notes += env_notes
    if arch == gpus_mod.CPU_ARCH:
        add_cpu_site(env, changes)
        if topo is not None:
            add_cpu_threads(env, changes, topo.total)

    preset_args, used, kept = ([], [], []) if server is None else fill_server_args(preset, server, native=native)
    spec_args, spec_used = ([], []) if server is None else speculative_args(opts.speculative, server)
    preset_args = spec_args + preset_args
    stage_table = ""
    swa_used: list = []
    mem_used: list = []
    if server is not None and topo is not None:
        final = parse_server_args(cli + preset_args)
        memory = _stage_memory_gib(arch, found, topo)
        final, preset_args, used, mem_used, swa_used = _fit_pool(final, server, cli, preset_args, used, topo,
                                                                 memory, preset, environ, overrides,
                                                                 model, notes)
        stage_table = _plan_final(final, topo, memory, preset, environ, overrides, env, changes, notes)
    base = [python or sys.executable, "-m", "sglang.launch_server"]
    node_argvs: list[list[str]] = []
    if topo is not None and topo.nnodes > 1:
        if topo.node_rank is None and not opts.dry_run:
            raise LaunchError(f"--nnodes {topo.nnodes} needs --node-rank on each node "
                              f"(0 on the node at --dist-init-addr, then 1..{topo.nnodes - 1}); "
                              "--dry-run prints every node's command")
        node_argvs = [base + with_node_rank(cli, r) + preset_args for r in range(topo.nnodes)]

    spec = LaunchSpec(arch=arch, preset=preset, gpus=found, env=env, changes=changes, argv=base + cli + preset_args,
                node_argvs=node_argvs, notes=notes, help_only=help_only, dry_run=opts.dry_run,
                preset_args_used=used, preset_args_kept=kept, spec_args_used=spec_used, swa_args_used=swa_used,
                mem_args_used=mem_used,
                stage_table=stage_table,
                card_arch=card_arch, native_path=native)
    if server is not None and (native or opts.speculative not in (None, "none")
                               or server.value("speculative_algorithm")):
        # SGLang's own verdict on every speculative combination and on the native checkpoint's
        # arguments (its DeepSeek-V4 overrides read the checkpoint's config), before 12 processes start.
        validate((node_argvs[0] if node_argvs else spec.argv)[3:], env)
        # SGLang only fails later, loading the draft, when mtp.* is not what its algorithm reads.
        check_draft_source(parse_server_args(cli + preset_args), model.config)
    if model is not None and model.served_format is not None:
        # SGLang JIT-compiles for the card's own arch; only what this checkpoint's path runs.
        spec.notes += _jit_cache_notes(card_arch, env, model.served_format)
    return spec


def _stage_memory_gib(arch: str, found: list, topo) -> float | None:
    """The memory one pipeline stage has, for the memory plan: the smallest GPU here; on the CPU
    target the host's RAM shared by every rank (pp x tp x dp processes on one host). None: unknown
    (no GPU here: the plan then uses the preset's card size)."""
    if arch == gpus_mod.CPU_ARCH:
        try:
            host = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
        except (ValueError, OSError, AttributeError):
            return None
        return host / max(1, topo.total)
    return min((g.memory_gib for g in found), default=None)


def _fit_pool(final, server, cli, preset_args, used, topo, memory, preset, environ, overrides, model, notes):
    """``--mem-fraction-static`` (:mod:`.mem_fraction`), then ``--swa-full-tokens-ratio``
    (:mod:`.swa_pool`), until neither changes: a higher ratio costs KV bytes per token, so the
    plan's pool shrinks, and that pool sizes the SWA pool. Both only ever go up, so it settles.
    Returns the final arguments, the preset's arguments and entries used, and the (flag, value,
    reason) each added."""
    was = {d: final.value(d) for d in (mem_fraction.DEST, swa_pool.DEST)}
    added: dict[str, tuple] = {}
    for _ in range(6):
        step_notes: list[str] = []
        final, preset_args, used, mem = _mem_fraction(final, server, cli, preset_args, used, topo, memory, preset,
                                                      environ, overrides, was[mem_fraction.DEST])
        final, preset_args, used, swa = _swa_pool(final, server, cli, preset_args, used, topo, memory, preset,
                                                  environ, overrides, model, step_notes, was[swa_pool.DEST])
        added.update({entry[0]: entry for entry in mem + swa})
        if not mem and not swa:
            break
    else:
        raise LaunchError("--mem-fraction-static and --swa-full-tokens-ratio did not settle; set both")
    notes += step_notes
    pick = [added.get(f) for f in (mem_fraction.FLAG, swa_pool.FLAG)]
    return final, preset_args, used, [e for e in pick[:1] if e], [e for e in pick[1:] if e]


def _mem_fraction(final, server, cli, preset_args, used, topo, memory, preset, environ, overrides, was=None):
    """``--mem-fraction-static`` from the memory plan (:mod:`.mem_fraction`): the final arguments, the
    preset's arguments and entries used, and the (flag, value, reason) it added."""
    staged = split_layers(final, topo, environ, overrides, memory, preset.min_memory_gib)
    return mem_fraction.apply(final, server, staged, cli, preset_args, used, parse_server_args, was)


def _swa_pool(final, server, cli, preset_args, used, topo, memory, preset, environ, overrides, model, notes,
              was=None):
    """``--swa-full-tokens-ratio`` against SGLang's prefill admission (:mod:`.swa_pool`): the final
    arguments, the preset's arguments and entries used, and the (flag, value, reason) it added.
    ``memory``: :func:`_stage_memory_gib`."""
    decision = swa_pool.decide(
        final, server.is_given(swa_pool.DEST), model.config if model is not None else None,
        swa_pool.device_memory_gib(final, memory or preset.min_memory_gib),
        lambda: split_layers(final, topo, environ, overrides, memory, preset.min_memory_gib).pool_tokens, was)
    if decision.note:
        notes.append(decision.note)
    if decision.ratio is None:
        return final, preset_args, used, []
    preset_args = swa_pool.with_ratio(preset_args, decision.ratio)
    used = [a for a in used if a.flag != swa_pool.FLAG]
    return (parse_server_args(cli + preset_args), preset_args, used,
            [(swa_pool.FLAG, decision.ratio, decision.reason)])


def _plan_final(final, topo, memory, preset, environ, overrides, env, changes, notes) -> str:
    """The environment the final arguments need: SGLANG_ENABLE_PP_SPEC for EAGLE over pp > 1, and
    the layer split (``SGLANG_PP_LAYER_PARTITION``) from the memory plan. Returns the plan's table."""
    pp_spec = pp_spec_env(final, topo.pp, environ, overrides)
    if pp_spec is not None:
        env[pp_spec[0]] = pp_spec[1]
        changes.append(EnvChange(pp_spec[0], None, pp_spec[1], "EAGLE with --pp-size > 1",
                                 "SGLang 0.5.23 allows EAGLE (MTP) over pipeline parallelism only with it"))
    staged = split_layers(final, topo, environ, overrides, memory, preset.min_memory_gib)
    notes += staged.notes
    if staged.value is not None:
        env[PARTITION_VAR] = staged.value
        changes.append(EnvChange(PARTITION_VAR, None, staged.value, "sglang-ampere plan", staged.reason))
    return staged.table


def _jit_cache_notes(arch: str, env: Mapping[str, str], checkpoint: str | None) -> list[str]:
    from sglang_ampere import jit_cache as warmup

    return warmup.cold_cache_notes(arch, env, checkpoint)


def main(argv: Sequence[str], environ: Mapping[str, str] | None = None,
         execvpe: Callable[..., object] = os.execvpe, stdout=None, stderr=None) -> int:
    """Run the launcher. Returns 2 on a user error; otherwise does not return (exec)."""
    stdout = stdout or sys.stdout
    stderr = stderr or sys.stderr
    try:
        spec = build_spec(list(argv), environ)
    except LaunchError as exc:
        print(f"sglang-ampere launch: error: {exc}", file=stderr)
        return 2
    text = format_spec(spec)
    if spec.dry_run:
        stdout.write(text)
        stdout.flush()
        return 0
    if not spec.help_only:
        stderr.write(text)
        stderr.flush()
    execvpe(spec.argv[0], spec.argv, spec.env)
    return 0  # reached only with a stand-in execvpe (tests)
