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
import functools
import os
import sys
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

from sglang_ampere import gpus as gpus_mod
from sglang_ampere.notes import Note, note

from . import mem_fraction, swa_pool
from .argv import ServerArgv, parse_env_overrides, parse_server_args, split_argv, wants_help, with_arg
from .errors import LaunchError
from .layer_split import VAR as PARTITION_VAR
from .layer_split import LayerSplit, speculative_of, split_layers
from .model_dir import check_model
from .presets import Preset, PresetError, load_builtin, load_file
from .render import dry_run_command, format_spec, shell_command
from .resolve import EnvChange, add_cpu_site, add_cpu_threads, fill_server_args, resolve_arch, resolve_env, target_arch
from .spec import LaunchSpec
from .speculative import check_draft_source, pp_spec_env, speculative_args, validate
from .topology import Topology, check_topology, topology_of, with_node_rank

__all__ = ["EnvChange", "LaunchError", "LaunchSpec", "build_spec", "dry_run_command", "format_spec", "main",
           "resolve_arch", "shell_command", "split_argv"]


def _load_preset(opts: argparse.Namespace, arch: str) -> Preset:
    try:
        return load_file(opts.preset) if opts.preset else load_builtin(arch)
    except PresetError as exc:
        raise LaunchError(str(exc)) from exc


def _gpu_notes(opts: argparse.Namespace, arch: str, found: list, preset: Preset) -> list[Note]:
    notes = []
    if opts.gpu != "auto" and found and {g.arch for g in found} != {arch}:
        notes.append(note("launch.gpu-differs", f"--gpu {arch} chosen, but this node has {gpus_mod.summarize(found)}"))
    if preset.min_memory_gib and found:
        small = [g for g in found if g.memory_gib + 1 < preset.min_memory_gib]
        if small:
            notes.append(note("launch.small-cards",
                              f"preset {preset.source} assumes {preset.min_memory_gib} GiB cards; "
                              f"{small[0].name} has {small[0].memory_gib:.0f} GiB (lower --mem-fraction-static "
                              "or --context-length if loading runs out of memory)"))
    return notes


def build_spec(argv: Sequence[str], environ: Mapping[str, str] | None = None,
               smi_output: str | None = None, python: str | None = None) -> LaunchSpec:
    """Everything ``launch`` decides, without side effects. Raises :class:`LaunchError`.

    SGLang's parser reads the user's server arguments once; what the launcher adds after them
    (the preset's, ``--speculative``'s, the memory plan's) extends that reading
    (:meth:`.argv.ServerArgv.with_args`)."""
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
    model = topo = None
    if server is not None:
        model = check_model(server.value("model_path"), arch, preset)
        notes += model.notes
        topo = topology_of(server)
        notes += check_topology(topo, opts.num_gpus if opts.num_gpus is not None else (len(found) or None))
    native = model is not None and model.native_path
    env, changes, env_notes = resolve_env(preset, environ, overrides, opts, native=native)
    notes += env_notes
    if arch == gpus_mod.CPU_ARCH:
        add_cpu_site(env, changes)
        if topo is not None:
            add_cpu_threads(env, changes, topo.total)
    base = [python or sys.executable, "-m", "sglang.launch_server"]
    if server is None:                                      # launch ... -- --help: SGLang's help only
        return LaunchSpec(arch=arch, preset=preset, gpus=found, env=env, changes=changes, argv=base + cli,
                          notes=notes, help_only=True, dry_run=opts.dry_run, card_arch=card_arch)

    preset_args, used, kept = fill_server_args(preset, server, native=native)
    spec_args, spec_used = speculative_args(opts.speculative, server)
    if native or opts.speculative not in (None, "none") or server.value("speculative_algorithm"):
        # SGLang's own verdict on every speculative combination and on the native checkpoint's
        # arguments (its DeepSeek-V4 overrides read the checkpoint's config), before 12 processes
        # start, and before the memory plan: a refused argument is named first. The plan only
        # adds its two values, --mem-fraction-static in (0, 1) and --swa-full-tokens-ratio <= 1.
        _validate(cli, spec_args + preset_args, server, topo, environ, overrides, env, model.config)
    memory = _stage_memory_gib(arch, found, topo)

    def split(final: ServerArgv) -> LayerSplit:
        return split_layers(final, topo, environ, overrides, memory, preset.min_memory_gib)

    fit = _fit_pool(server, spec_args + preset_args, split, model.config, memory or preset.min_memory_gib)
    added = fit.argv
    used = [a for a in used if a.flag not in {e[0] for e in fit.mem + fit.swa}]
    final = server.with_args(added)
    layers = split(final)
    for c in _final_env(final, topo, environ, overrides, layers):
        env[c.name] = c.new
        changes.append(c)
    notes += fit.notes + layers.notes

    node_argvs: list[list[str]] = []
    if topo.nnodes > 1:
        if topo.node_rank is None and not opts.dry_run:
            raise LaunchError(f"--nnodes {topo.nnodes} needs --node-rank on each node "
                              f"(0 on the node at --dist-init-addr, then 1..{topo.nnodes - 1}); "
                              "--dry-run prints every node's command")
        node_argvs = [base + with_node_rank(cli, r) + added for r in range(topo.nnodes)]
    spec = LaunchSpec(arch=arch, preset=preset, gpus=found, env=env, changes=changes, argv=base + cli + added,
                      node_argvs=node_argvs, notes=notes, dry_run=opts.dry_run,
                      preset_args_used=used, preset_args_kept=kept, spec_args_used=spec_used,
                      swa_args_used=fit.swa, mem_args_used=fit.mem, stage_table=layers.table,
                      card_arch=card_arch, native_path=native)
    if model.served_format is not None:
        # SGLang JIT-compiles for the card's own arch; only what this checkpoint's path runs.
        spec.notes += _jit_cache_notes(card_arch, env, model.served_format, speculative_of(final))
    return spec


def _validate(cli: list[str], added: list[str], server: ServerArgv, topo: Topology, environ: Mapping[str, str],
              overrides: Mapping[str, str], env: Mapping[str, str], config: dict) -> None:
    """SGLang's checks (:func:`.speculative.validate`) on node 0's arguments and the environment
    they will get (``SGLANG_ENABLE_PP_SPEC`` included), then the draft source, which SGLang only
    checks later, loading the draft. Raises :class:`LaunchError`."""
    args = server.with_args(added)
    final_env = dict(env)
    for c in _final_env(args, topo, environ, overrides, LayerSplit()):
        final_env[c.name] = c.new
    validate((with_node_rank(cli, 0) if topo.nnodes > 1 else list(cli)) + added, final_env)
    check_draft_source(args, config)


def _stage_memory_gib(arch: str, found: list, topo: Topology) -> float | None:
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


@dataclass(frozen=True)
class PoolFit:
    """What :func:`_fit_pool` settled on."""

    argv: list[str]                 # the launcher's arguments, with the two values it set
    mem: list                       # [(flag, value, reason)] of --mem-fraction-static, when it set it
    swa: list                       # [(flag, value, reason)] of --swa-full-tokens-ratio, when it set it
    notes: list[Note]               # why the SWA rule was not checked, when it was not


def _fit_pool(server: ServerArgv, added: list[str], split: Callable[[ServerArgv], LayerSplit],
              config: dict, device_gib: float | None) -> PoolFit:
    """``--mem-fraction-static`` (:mod:`.mem_fraction`), then ``--swa-full-tokens-ratio``
    (:mod:`.swa_pool`), until neither changes: a higher ratio costs KV bytes per token, so the
    plan's pool shrinks, and that pool sizes the SWA pool. Both only ever go up, so it settles.

    ``added``: the launcher's arguments so far; ``split``: the layer split (and memory plan) of
    a final command line; ``device_gib``: a GPU's memory (the preset's card size without GPUs)."""
    first = server.with_args(added)
    was = {d: first.value(d) for d in (mem_fraction.DEST, swa_pool.DEST)}
    chosen: dict[str, tuple] = {}
    for _ in range(6):
        final = server.with_args(added)
        mem = mem_fraction.decide(split(final), server.is_given(mem_fraction.DEST), was[mem_fraction.DEST])
        if mem is not None:
            added = with_arg(added, mem_fraction.FLAG, mem[0])
            chosen[mem_fraction.FLAG] = (mem_fraction.FLAG, *mem)
            final = server.with_args(added)
        swa = swa_pool.decide(final, server.is_given(swa_pool.DEST), config,
                              swa_pool.device_memory_gib(final, device_gib),
                              functools.partial(_pool_tokens, split, final), was[swa_pool.DEST])
        if swa.ratio is not None:
            added = with_arg(added, swa_pool.FLAG, swa.ratio)
            chosen[swa_pool.FLAG] = (swa_pool.FLAG, swa.ratio, swa.reason)
        if mem is None and swa.ratio is None:
            break
    else:
        raise LaunchError("--mem-fraction-static and --swa-full-tokens-ratio did not settle; set both")
    pick = [chosen.get(f) for f in (mem_fraction.FLAG, swa_pool.FLAG)]
    return PoolFit(added, [e for e in pick[:1] if e], [e for e in pick[1:] if e], [swa.note] if swa.note else [])


def _pool_tokens(split: Callable[[ServerArgv], LayerSplit], final: ServerArgv) -> int | None:
    return split(final).pool_tokens


def _final_env(final: ServerArgv, topo: Topology, environ: Mapping[str, str], overrides: Mapping[str, str],
               layers: LayerSplit) -> list[EnvChange]:
    """The variables the final arguments need: ``SGLANG_ENABLE_PP_SPEC`` for EAGLE over pp > 1, and
    the layer split (``SGLANG_PP_LAYER_PARTITION``) from the memory plan."""
    out = []
    pp_spec = pp_spec_env(final, topo.pp, environ, overrides)
    if pp_spec is not None:
        out.append(EnvChange(pp_spec[0], None, pp_spec[1], "EAGLE with --pp-size > 1",
                             "SGLang 0.5.23 allows EAGLE (MTP) over pipeline parallelism only with it"))
    if layers.value is not None:
        out.append(EnvChange(PARTITION_VAR, None, layers.value, "sglang-ampere plan", layers.reason))
    return out


def _jit_cache_notes(arch: str, env: Mapping[str, str], checkpoint: str | None, speculative: str) -> list[Note]:
    from sglang_ampere import jit_cache as warmup

    return warmup.cold_cache_notes(arch, env, checkpoint, speculative)


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
