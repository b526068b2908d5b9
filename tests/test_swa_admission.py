"""The SWA-pool admission stall, reproduced with SGLang 0.5.23's own admission code, against
:func:`sglang_ampere.memory_plan.swa_pool_rule` (``S >= max(4P, C + 2P)``).

One request alone on an idle server (``reference/cpu-serving.md``, "A stall with a small SWA
pool, root-caused"). Each scheduling round builds SGLang's ``SWAPrefillBudget`` (what
``PrefillAdder`` uses for a DeepSeek-V4 SWA pool) over a fake allocator whose free SWA tokens are
the pool minus the pages the request holds, and asks it what ``PrefillAdder`` asks:

* first admission, ``_select_prefill_admission``: ``check_prefill`` and its chunk bound, the
  chunk floored to pages (``schedule_policy.py``); with ``ignore_eos`` and the radix cache off,
  ``add_one_req_ignore_eos``: ``can_allocate_prefill``, then a whole ``C`` chunk;
* each next chunk, ``add_chunked_req``: ``available_chunk_tokens`` then ``fit_chunk``;
  None from either means the request is not scheduled this round.

Between rounds the fake pool does what ``alloc_for_extend`` does: ``maybe_evict_swa`` first
(without prefix sharing it frees pages below ``floor_P(prefix - window)``, ``mem_cache/common.py``),
then pages up to ``ceil_P(prefix + chunk)``. Nothing else runs, so a round that admits nothing
admits nothing forever: that is the stall.
"""

from __future__ import annotations

import itertools

import pytest

from sglang_ampere import memory_plan as plan
from sglang_ampere.synth import REAL, make_config

budget_mod = pytest.importorskip("sglang.srt.mem_cache.prefill_budget")

P = plan.PAGE_SIZE
W = int(make_config(REAL)["sliding_window"])
CONTEXT = 8192


def _ceil(x: int) -> int:
    return -(-x // P) * P


class _Allocator:
    """The allocator calls ``SWAPrefillBudget`` makes: one SWA pool of ``size_swa`` tokens."""

    def __init__(self, size_swa: int):
        self.size_swa, self.page_size, self.held = size_swa, P, 0

    def swa_available_size(self) -> int:
        return self.size_swa - self.held

    def full_available_size(self) -> int:
        return 1 << 30                                   # the full pool is never the limit here


class _RadixOff:
    """The tree-cache calls of a disabled radix cache: nothing evictable."""

    sliding_window_size = W

    def swa_evictable_size(self) -> int:
        return 0

    def full_evictable_size(self) -> int:
        return 0

    def supports_mamba(self) -> bool:
        return False


def serve(pool: int, prompt: int, new: int, chunk: int | None, ignore_eos: bool = False) -> tuple[list[int], int]:
    """(chunks SGLang admits, prompt tokens left when it stops); 0 left = the prefill finished.
    ``chunk`` None: chunked prefill off."""
    alloc, tree = _Allocator(pool), _RadixOff()
    done, evicted, chunks = 0, 0, []
    while done < prompt:
        budget = budget_mod.SWAPrefillBudget(alloc, tree)
        left = prompt - done
        if not chunks and ignore_eos:
            if not budget.can_allocate_prefill(paged_input=_ceil(left), extend_input_len=left, max_new_tokens=new,
                                               chunk_limit=chunk):
                break
            size = left if chunk is None or left <= chunk else chunk
        elif not chunks:
            ok, limit = budget.check_prefill(extend_input_len=left, total_tokens=left + new + P, max_new_tokens=new,
                                             input_tokens=prompt, swa_host_hit_length=0, chunk_limit=chunk)
            if not ok:
                break
            size = limit // P * P if limit is not None and _ceil(left) > limit else left
        else:
            rem = budget.available_chunk_tokens(chunk)
            if rem is not None:
                rem = budget.fit_chunk(extend_input_len=left, max_new_tokens=new, chunk_limit=rem)
            if rem is None:
                break
            size = min(left, rem)
        if size <= 0:
            break
        evicted = max(evicted, (done - W) // P * P)       # maybe_evict_swa, prefix = done
        done += size
        alloc.held = _ceil(done) - evicted
        assert alloc.held <= pool, f"SGLang admitted more SWA than the pool holds: {alloc.held} > {pool}"
        chunks.append(size)
    return chunks, prompt - done


def test_the_prototype_stall_and_its_fix():
    """--max-total-tokens 8192: ratio 0.1 (S 768) stalls a 700-token prompt after chunks 256 + 256 with
    188 tokens pending, as the CPU server did; ratio 0.125 (S 1024) serves it in 512 + 188."""
    s768, s1024 = plan.swa_pool_tokens(8192, 0.1), plan.swa_pool_tokens(8192, 0.125)
    assert (s768, s1024) == (768, 1024)
    assert serve(s768, 700, 1, 2048) == ([256, 256], 188)
    assert serve(s1024, 700, 1, 2048) == ([512, 188], 0)
    assert serve(s768, 500, 1, 2048) == ([256, 244], 0)        # within two chunks it finishes
    assert serve(s1024, 1500, 1, 2048)[1] == 0
    assert not plan.swa_pool_rule(8192, 0.1, 512, CONTEXT).ok
    assert plan.swa_pool_rule(8192, 0.125, 512, CONTEXT).ok
    # the second trap: ignore_eos with the radix cache off is never admitted at 4P with C = 2048 ...
    assert serve(s1024, 1500, 16, 2048, ignore_eos=True) == ([], 1500)
    # ... and the rule asks for C + 2P there
    assert not plan.swa_pool_rule(8192, 0.125, 2048, CONTEXT).ok
    need = plan.swa_pool_rule(8192, 0.125, 2048, CONTEXT).need
    assert need == 2560 and serve(need, 1500, 16, 2048, ignore_eos=True)[1] == 0


POOLS = range(2 * P, 24 * P + 1, P)
CHUNKS = (256, 512, 1024, 2048, None)
PROMPTS = (1, 127, 256, 257, 500, 700, 1023, 1500, 2100, 4000, 6000, CONTEXT)
NEW = (0, 1, 128)


def test_the_rule_is_sufficient_and_tight():
    """Over pools, chunk sizes (and chunked prefill off), prompt lengths up to the context,
    max_new_tokens 0/1/128, with and without ignore_eos: every pool that meets the rule finishes
    every prefill; for every chunk size the pool one page under the rule stalls some request."""
    stalls = {}
    for pool, chunk, prompt, new, eos in itertools.product(POOLS, CHUNKS, PROMPTS, NEW, (False, True)):
        rule = plan.swa_pool_rule(pool * 4, 0.25, chunk or -1, CONTEXT)
        assert rule.pool == pool
        left = serve(pool, prompt, new, chunk, eos)[1]
        if rule.ok:
            assert left == 0, f"S {pool} C {chunk} L {prompt} n {new} ignore_eos {eos}: stalled with {left} left"
        elif left:
            stalls.setdefault(chunk, set()).add(pool)
    for chunk in CHUNKS:
        need = plan.swa_pool_rule(1 << 20, 1.0, chunk or -1, CONTEXT).need
        if need - P in POOLS:
            assert need - P in stalls.get(chunk, ()), f"C {chunk}: nothing stalls at S {need - P}"


def test_four_pages_suffice_for_a_decoding_request():
    """The note's minimum: with max_new_tokens >= 1 and no ignore_eos, S >= 4P never stalls, whatever C."""
    for pool, chunk, prompt, new in itertools.product(range(4 * P, 12 * P + 1, P), CHUNKS[:-1], PROMPTS, (1, 128)):
        assert serve(pool, prompt, new, chunk)[1] == 0, (pool, chunk, prompt, new)
    assert serve(3 * P, 700, 1, 256)[1] > 0                  # and 3P does not


def test_the_pool_size_is_sglangs_and_the_rule_is_above_its_own_floor():
    """``plan.swa_pool_tokens`` is SGLang's ratio-mode sizing (``DSV4PoolConfigurator._get_swa_tokens``
    after the page floor of ``_compute_dsv4_sizes``), and every pool the rule accepts passes SGLang's own
    check (``validate_swa_pool_size``), which only refuses pools up to window + page (384 here)."""
    from sglang.srt.model_executor.pool_configurator import DSV4PoolConfigurator

    sglang = object.__new__(DSV4PoolConfigurator)            # SGLang's own tests build stubs this way
    sglang.swa_cap_tokens = None
    for n, ratio in itertools.product((8192, 8200, 65536, 147200, 13691392), (0.05, 0.1, 0.125, 0.3125, 0.5625, 1.0)):
        sglang.swa_ratio = ratio
        assert plan.swa_pool_tokens(n, ratio) == sglang._get_swa_tokens(n // P * P, P), (n, ratio)
    for chunk in CHUNKS:
        need = plan.swa_pool_rule(1 << 20, 1.0, chunk or -1, CONTEXT).need
        DSV4PoolConfigurator.validate_swa_pool_size(need, W, P)
    with pytest.raises(ValueError, match="cannot hold even one request"):
        DSV4PoolConfigurator.validate_swa_pool_size(W + P, W, P)   # negative control: SGLang's floor
