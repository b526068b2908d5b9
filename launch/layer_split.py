"""The memory plan of a launch, and for ``--pp-size > 1`` the layer split (``SGLANG_PP_LAYER_PARTITION``).

Every launch whose GPU memory is known (the GPUs here, the preset's card size on a dry run
without GPUs; on the CPU target the host's RAM divided among the ranks) gets a memory plan
(:mod:`sglang_ampere.memory_plan`, from the checkpoint's headers and the server arguments as they
will be: the user's, then the preset's). At pp 1 it sizes the pool only (:mod:`.mem_fraction`,
:mod:`.swa_pool`). With pp > 1 SGLang splits the layers evenly and gives the remainder to the last
stages, which also hold the head (and, with MTP, the draft): the tightest stage is the last one.
When the user set no ``SGLANG_PP_LAYER_PARTITION`` (environment or ``--env``), the launcher sets
the split that maximises the smallest free memory per stage. The dry run prints the per-stage
table; a context x concurrency that does not fit is a warning.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Mapping

from sglang_ampere import envvars
from sglang_ampere.notes import Note, note, warning
from sglang_ampere.speculative import of_algorithm

from .argv import ServerArgv
from .topology import Topology

if TYPE_CHECKING:
    from sglang_ampere import memory_plan as plan_mod

VAR = envvars.SGLANG_PP_LAYER_PARTITION
#: SGLang 0.5.23's values when the arguments are not given: DeepSeek-V4 sets 256 running
#: requests (48 with speculative decoding, ``speculative_hook``); the window-cache ratio is
#: :data:`sglang_ampere.memory_plan.SGLANG_DSV4_SWA_RATIO`. The plan is imported where it is used: the
#: launcher must import without torch (the plan reads checkpoints through ``inventory``).
DEFAULT_MAX_RUNNING, DEFAULT_MAX_RUNNING_SPEC = 256, 48


@dataclass
class LayerSplit:
    value: str | None = None                 # the split to set (None: nothing to set)
    reason: str = ""
    table: str = ""                          # the plan's table, for --dry-run
    notes: list[Note] = field(default_factory=list)
    pool_tokens: int | None = None           # SGLang's KV pool at --mem-fraction-static (tightest stage)
    memory_plan: plan_mod.MemoryPlan | None = None   # the plan the split comes from (None: none made)
    error: Exception | None = None           # the PlanError that stopped it


def speculative_of(server: ServerArgv) -> str:
    """The ``--speculative`` choice (:mod:`sglang_ampere.speculative`) the final arguments run."""
    return of_algorithm(server.value("speculative_algorithm"))


def settings_of(server: ServerArgv, model: plan_mod.Model) -> plan_mod.Settings:
    from sglang_ampere import memory_plan as plan_mod

    spec = speculative_of(server)
    running = server.value("max_running_requests") or (
        DEFAULT_MAX_RUNNING_SPEC if spec != "none" else DEFAULT_MAX_RUNNING)
    return plan_mod.Settings(
        context_length=int(server.value("context_length") or model.config["max_position_embeddings"]),
        max_running_requests=int(running),
        chunked_prefill_size=int(server.value("chunked_prefill_size") or plan_mod.DEFAULT_CHUNKED_PREFILL),
        mem_fraction_static=float(server.value("mem_fraction_static") or 0.85),
        swa_ratio=float(server.value("swa_full_tokens_ratio") or plan_mod.SGLANG_DSV4_SWA_RATIO),
        speculative=spec,
    )


def split_layers(server: ServerArgv, topo: Topology, environ: Mapping[str, str], overrides: Mapping[str, str],
                 gpu_memory_gib: float | None, preset_memory_gib: float | None) -> LayerSplit:
    """The memory plan, what to set for the split (nothing at pp 1), and the table. Never raises: a
    plan that cannot be made is a warning (code ``split.no-plan``, the exception in
    :attr:`LayerSplit.error`, which :mod:`.mem_fraction` turns into a refusal when no stage can
    hold its weights)."""
    from sglang_ampere import memory_plan as plan_mod

    out = LayerSplit()
    mem = gpu_memory_gib or preset_memory_gib
    user = overrides.get(VAR, environ.get(VAR)) if topo.pp > 1 else None
    if mem is None:
        left = f"{VAR} is left to SGLang's even split" if topo.pp > 1 else "no memory plan is made"
        out.notes.append(note("split.no-memory", f"no GPU memory known (no GPU here, no card size in the preset): "
                              f"{left}; `sglang-ampere plan` computes one"))
        return out
    try:
        model = plan_mod.load_model(server.value("model_path"))
        settings = settings_of(server, model)
        gpus = topo.tp * topo.pp
        partition = None
        if user is not None:
            try:
                partition = [int(x) for x in user.split(",")]
            except ValueError:
                out.notes.append(warning("split.bad-partition", f"{VAR}={user!r} is not a comma-separated list of "
                                         "layer counts; SGLang will refuse it"))
                return out
        plan = plan_mod.make_plan(model, gpus, mem, nodes=topo.nnodes, tp=topo.tp, settings=settings,
                                  partition=partition)
    except plan_mod.PlanError as exc:
        out.notes.append(warning("split.no-plan", f"memory plan: {exc}"))
        out.error = exc
        return out
    out.pool_tokens, out.memory_plan = plan.sglang_pool_tokens, plan
    out.table = plan_mod.format_table(plan, notes=False)     # its notes become the warnings below
    ours = min(r.free_bytes for r in plan.ranks) / plan_mod.GIB
    dflt = plan.default_min_free_bytes / plan_mod.GIB
    if topo.pp > 1 and user is None:            # one stage has nothing to split
        out.value = plan.partition_env
        out.reason = (f"layer split from the checkpoint headers for {mem:.3g} GiB per stage: smallest free memory per "
                      f"stage {ours:.2f} GiB (SGLang's even split: {dflt:.2f} GiB); computed, not measured")
    elif topo.pp > 1:                           # the user's split, compared with the plan's
        best = plan_mod.make_plan(model, gpus, mem, nodes=topo.nnodes, tp=topo.tp, settings=settings)
        better = min(r.free_bytes for r in best.ranks) / plan_mod.GIB
        out.notes.append(note("split.user-kept", f"keeping your {VAR}={user} (smallest free {ours:.2f} GiB per "
                              f"stage; the plan's {best.partition_env} gives {better:.2f} GiB)"))
    if not plan.fits:
        s = plan.settings
        out.notes.append(warning(
            plan_mod.KV_DOES_NOT_FIT,
            f"--context-length {s.context_length} x --max-running-requests {s.max_running_requests} "
            f"does not fit: the KV cache holds {plan.max_total_tokens} tokens on the tightest stage "
            f"(up to {plan.max_total_tokens // max(1, s.max_running_requests)} per request); lower one of them"))
    # The plan's other notes, each a warning here: the server is about to start with them.
    out.notes += [warning(n.code, n.text) for n in plan.notes if n.code != plan_mod.KV_DOES_NOT_FIT]
    return out
