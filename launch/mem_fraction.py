"""``--mem-fraction-static`` from the memory plan, per topology; a topology the plan cannot fit is refused.

Where the launcher makes a memory plan (any pp, with a card size known, :mod:`.layer_split`):

* the plan cannot hold a stage's weights and reserves at all (``plan.CapacityError``): refused,
  with the stage, its numbers and what to change;
* the user did not set ``--mem-fraction-static`` (the preset's value, or the plan's assumed 0.85,
  counts as not set): the launcher passes :func:`sglang_ampere.memory_plan.mem_fraction`, the fraction
  closest to the preset's at which SGLang's KV pool holds :func:`sglang_ampere.memory_plan.min_pool_tokens`
  (one request at the full ``--context-length``) on every stage while every stage keeps the plan's
  reserves (activations, CUDA graphs, budgets) outside the pool; the preset's value is kept when it
  already does. No fraction does both: refused, naming each stage's shortfall and what to change
  (more stages, a shorter context, fewer running requests);
* the user set it: kept; the plan's notes say when it leaves no pool or no room for the reserves.

Computed on paper from the checkpoint headers (``sglang-ampere plan``), not measured.
"""

from __future__ import annotations

from .errors import LaunchError

FLAG, DEST = "--mem-fraction-static", "mem_fraction_static"


def _fixes(s) -> str:
    return (f"use more pipeline stages (--pp-size) or larger cards, a shorter --context-length (now "
            f"{s.context_length}), or fewer --max-running-requests (now {s.max_running_requests})")


def decide(split, user_set: bool, was: object = None) -> tuple[str, str] | None:
    """(value, reason) of ``--mem-fraction-static`` to pass, or None to leave the arguments alone.
    ``split``: :func:`.layer_split.split_layers`'s result for the final arguments; ``was``: the value before
    the launcher changed any argument (the preset's), for the reason. Raises :class:`LaunchError`."""
    from sglang_ampere import memory_plan as plan_mod

    if isinstance(split.error, plan_mod.CapacityError):
        raise LaunchError(f"the memory plan cannot fit this topology: {split.error}")
    plan = split.memory_plan
    if plan is None or user_set:
        return None
    s = plan.settings
    need = plan_mod.min_pool_tokens(s)
    mf = plan_mod.mem_fraction(plan, need, s.mem_fraction_static)
    where = f"{plan.gpus} x {plan.mem_gib:g} GiB, tp {plan.tp} x pp {plan.pp}"
    if mf.value is None:
        stages = "; ".join(f"stage {r}: {t} tokens, {b / plan_mod.GIB:.2f} GiB short" for r, t, b in mf.short)
        raise LaunchError(
            f"the memory plan cannot fit this topology ({where}): a KV pool of {need} tokens (one "
            f"{s.context_length}-token request) needs --mem-fraction-static >= {mf.low:.3f} on every stage, but "
            f"above {mf.high:.3f} a stage loses the room its activations, CUDA graphs and budgets need. At "
            f"{mf.high:.3f} SGLang's pool holds {stages}. To fix: {_fixes(s)}")
    if abs(mf.value - s.mem_fraction_static) < 5e-4:
        return None
    value = f"{mf.value:.3f}".rstrip("0").rstrip(".")
    why = (f"below it SGLang's KV pool cannot hold {need} tokens (one {s.context_length}-token request) on every "
           "stage" if mf.value > s.mem_fraction_static else
           "above it a stage loses the room its activations, CUDA graphs and budgets need")
    first = was if was is not None else f"{s.mem_fraction_static:g}"
    return value, (f"memory plan for {where} (computed from the headers, not measured): instead of "
                   f"{first}, {why}; usable range {mf.low:.3f}-{mf.high:.3f}")
