"""The SWA pool against SGLang 0.5.23's prefill admission: ``launch`` never starts a server whose
chunked prompts can stall forever.

The rule is :func:`sglang_ampere.memory_plan.swa_pool_rule` (SWA pool ``S >= max(4P, C + 2P)``, P = 256,
C = ``--chunked-prefill-size``), applied to the final server arguments (the user's, then the
preset's), with SGLang's own values where an argument is unset:

* ``--swa-full-tokens-ratio``: DeepSeek-V4's model override sets 0.1;
* ``--chunked-prefill-size``: what SGLang picks for the device memory (the GPUs here, the
  preset's card size on a dry run; host memory for ``--device cpu``), 4096 when none is known;
* ``--max-total-tokens`` (N): when given, SGLang's pool is at most N (the memory plan's pool
  when that is smaller: SGLang takes the smaller, ``KVCacheConfigurator._apply_token_constraints``);
  when not, SGLang sizes the pool from memory at start, so the rule uses the memory plan's pool at
  ``--mem-fraction-static`` (the tightest stage) where ``plan`` made one (a card size known), and
  is skipped with a note otherwise: N then depends on the card and is tens of
  thousands of tokens or more on any card that holds the model, far above the rule
  (``cpu-serving.md``, "GPU and concurrency").

Ratio not given by the user (the preset's value, or SGLang's 0.1) and the rule fails: the
launcher passes the smallest ratio that meets it and says why in the dry run. Ratio given by the
user (command line or ``--config``): a :class:`LaunchError` naming the rule, the numbers and
what to change. No ratio up to 1.0 meets it (C too large for N): a :class:`LaunchError` as well.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from sglang_ampere.notes import Note, note

from .argv import ServerArgv
from .errors import LaunchError

FLAG, DEST = "--swa-full-tokens-ratio", "swa_full_tokens_ratio"


@dataclass
class SwaDecision:
    ratio: str | None = None      # the ratio to pass (None: leave the arguments alone)
    reason: str = ""              # why, for the dry run
    note: Note | None = None      # why the rule could not be applied, when it could not


def _chunk(final: ServerArgv, mem_gib: float | None) -> tuple[int, str]:
    from sglang_ampere import memory_plan as plan_mod

    given = final.value("chunked_prefill_size")
    if given is not None:
        return int(given), f"--chunked-prefill-size {given}"
    c = plan_mod.sglang_chunked_prefill(mem_gib)
    where = f"{mem_gib:g} GiB" if mem_gib is not None else "no memory known"
    return c, f"--chunked-prefill-size unset, so SGLang's {c} ({where})"


def decide(final: ServerArgv, user_ratio: bool, config: dict | None, mem_gib: float | None,
           plan_pool_tokens: Callable[[], int | None], was: object = None) -> SwaDecision:
    """What to do about ``--swa-full-tokens-ratio`` for the final arguments. Raises :class:`LaunchError`.

    ``user_ratio``: the user set ``--swa-full-tokens-ratio`` (command line or ``--config``; ``final``
    also holds the preset's arguments); ``mem_gib``: the device memory SGLang will see (for its own
    ``--chunked-prefill-size``);
    ``plan_pool_tokens``: SGLang's pool per the memory plan, None when there is no plan (called
    only when ``--max-total-tokens`` is unset); ``was``: the ratio before the launcher changed any
    argument (the preset's; None: SGLang's), for the reason.
    """
    from sglang_ampere import memory_plan as plan_mod

    ratio = float(final.value(DEST) or plan_mod.SGLANG_DSV4_SWA_RATIO)
    chunk, chunk_src = _chunk(final, mem_gib)
    context = final.value("context_length") or (config or {}).get("max_position_embeddings") or 0
    limit = final.value("max_total_tokens")
    planned = None
    if limit is None:
        planned = plan_pool_tokens()
        if planned == 0:
            return SwaDecision(note=note(
                "launch.swa-rule-no-pool", "SWA pool rule not checked: the memory plan leaves SGLang no KV pool at "
                "this --mem-fraction-static (see the plan's warning)"))
        if not planned:
            return SwaDecision(note=note(
                "launch.swa-rule-unchecked",
                "SWA pool rule not checked: --max-total-tokens is unset and no memory plan sizes the pool "
                "here (SGLang sizes it from GPU memory at start, far above the rule on a card that holds the "
                f"model); with --max-total-tokens N, launch checks floor_256({ratio:g} x N) >= "
                f"max(1024, {chunk} + 512)"))
        n, n_src = planned, f"SGLang's pool per the memory plan (--max-total-tokens unset): {planned} tokens"
    else:
        n, n_src = int(limit), f"--max-total-tokens {limit}"
        smaller = plan_pool_tokens()
        if smaller and smaller < n:     # SGLang takes the smaller of the two (_apply_token_constraints)
            planned = smaller
            n, n_src = smaller, f"SGLang's pool per the memory plan, under --max-total-tokens {limit}: {smaller} tokens"
    rule = plan_mod.swa_pool_rule(n, ratio, chunk, int(context))
    if rule.ok:
        return SwaDecision()
    where = (f"{n_src}, {chunk_src}" + (", chunked prefill off: the context length counts" if chunk <= 0 else ""))
    stall = ("SGLang 0.5.23 then stalls a chunked prompt forever once it is longer than its first chunks "
             "(the next chunk waits for SWA pages only that chunk would free; cpu-serving.md, "
             "'A stall with a small SWA pool')")
    best = rule.min_ratio
    if user_ratio or best is None:
        fixes = [f"--swa-full-tokens-ratio {best} or more"] if best is not None else []
        if rule.max_chunk is not None and chunk > 0:
            fixes.append(f"--chunked-prefill-size {rule.max_chunk} or less")
        fixes.append(f"--max-total-tokens {rule.min_full_tokens} or more (at ratio {ratio:g})" if planned is None
                     else "a larger KV pool (more stages, or a higher --mem-fraction-static)")
        if best is None and rule.full_tokens >= 4 * plan_mod.PAGE_SIZE and chunk > 0:
            fixes.append(f"--chunked-prefill-size {rule.full_tokens - 2 * plan_mod.PAGE_SIZE} or less with "
                         "--swa-full-tokens-ratio 1")
        src = f"{FLAG} {final.value(DEST)}" if user_ratio else f"no {FLAG} reaches it at ratio <= 1.0"
        raise LaunchError(f"{src}: {rule.formula()} ({where}). {stall}. Use " + ", or ".join(fixes))
    was = f"the preset's {was}" if was is not None else \
        f"SGLang's DeepSeek-V4 default {plan_mod.SGLANG_DSV4_SWA_RATIO}"
    if final.value(DEST) is not None and float(final.value(DEST)) != ratio:
        was += f" (raised to {final.value(DEST)} for the memory plan's pool)"
    after = plan_mod.swa_pool_tokens(rule.full_tokens, best)
    return SwaDecision(ratio=f"{best:g}", reason=(
        f"{was} gives {rule.formula()} ({where}); {stall}. {best:g} gives an SWA pool of {after} tokens "
        "(the smallest ratio that meets the rule)"))


def device_memory_gib(final: ServerArgv, gpu_gib: float | None) -> float | None:
    """The memory SGLang sizes its own ``--chunked-prefill-size`` by: the GPU's, or with
    ``--device cpu`` the host's, read by SGLang's own ``get_device_memory_capacity``."""
    if final.value("device") == "cpu":
        from sglang.srt.utils.common import get_device_memory_capacity

        mib = get_device_memory_capacity("cpu")
        return None if mib is None else mib / 1024
    return gpu_gib
