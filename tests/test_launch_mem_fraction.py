"""``launch`` derives ``--mem-fraction-static`` from the memory plan per topology and refuses a
topology the plan cannot fit (:mod:`sglang_ampere.launch.mem_fraction`, ``plan.mem_fraction``).

The model is a headers-only copy of DeepSeek-V4-Flash (real config and inventory) on the sm86
preset's 24 GiB cards (a dry run without GPUs plans for the preset's card size).
"""

from __future__ import annotations

import pytest
from helpers.launch import dry_run

from sglang_ampere import memory_plan as plan_mod
from sglang_ampere.launch.errors import LaunchError
from sglang_ampere.launch.launcher import format_spec

pytest.importorskip("sglang")

FLAG = "--mem-fraction-static"


def _value(argv, flag):
    found = [argv[i + 1] for i, a in enumerate(argv) if a == flag]
    assert len(found) <= 1, argv
    return found[0] if found else None


def _replan(real_headers, argv, tp, gpus):
    """The plan for the final command's own arguments (what SGLang will be given)."""
    s = plan_mod.Settings(context_length=int(_value(argv, "--context-length")),
                          max_running_requests=int(_value(argv, "--max-running-requests")),
                          chunked_prefill_size=int(_value(argv, "--chunked-prefill-size")),
                          mem_fraction_static=float(_value(argv, FLAG)),
                          swa_ratio=float(_value(argv, "--swa-full-tokens-ratio")))
    return plan_mod.make_plan(plan_mod.load_model(real_headers), gpus, 24, tp=tp, settings=s)


def test_tp4_pp2_on_24gb_gets_a_fraction_that_fits(real_headers, caller_env):
    """The issue's case: the preset's 0.85 leaves SGLang no KV pool at TP4 x PP2 on 24 GB cards."""
    before = _replan(real_headers, ["--context-length", "65536",
                            "--max-running-requests", "16", "--chunked-prefill-size", "4096", FLAG, "0.85",
                            "--swa-full-tokens-ratio", "0.05"], 4, 8)
    assert before.sglang_pool_tokens == 0                          # what the preset alone gives
    plan = dry_run(real_headers, caller_env, "--tp-size", "4", "--pp-size", "2")
    value = _value(plan.argv, FLAG)
    assert value is not None and float(value) > 0.85, plan.argv
    assert FLAG not in {a.flag for a in plan.preset_args_used}
    final = _replan(real_headers, plan.argv, 4, 8)
    assert final.sglang_pool_tokens >= 65536, "one full-context request fits on every stage"
    assert float(value) <= final.max_mem_fraction_static, "every stage keeps its reserves"
    swa = plan_mod.swa_pool_rule(final.sglang_pool_tokens, float(_value(plan.argv, "--swa-full-tokens-ratio")),
                                 4096, 65536)
    assert swa.ok, swa                                             # and the SWA rule holds on that pool
    line = next(ln for ln in format_spec(plan).splitlines() if ln.startswith(f"# memory plan: {FLAG} {value}"))
    assert "instead of 0.85" in line and "65536 tokens" in line
    # negative control: pp 12 fits at the preset's value, which is kept without a word
    twelve = dry_run(real_headers, caller_env, "--pp-size", "12")
    assert _value(twelve.argv, FLAG) == "0.85" and not twelve.mem_args_used
    assert "# memory plan:" not in format_spec(twelve)


def test_the_users_fraction_is_kept(real_headers, caller_env):
    plan = dry_run(real_headers, caller_env, "--tp-size", "4", "--pp-size", "2", FLAG, "0.85")
    assert _value(plan.argv, FLAG) == "0.85" and not plan.mem_args_used
    assert any("needs at least" in n for n in map(str, plan.notes)), plan.notes      # the plan's warning stays


def test_a_topology_without_room_for_the_pool_is_refused_per_stage(real_headers, caller_env):
    with pytest.raises(LaunchError) as err:
        dry_run(real_headers, caller_env, "--tp-size", "4", "--pp-size", "2", "--context-length", "196608")
    msg = str(err.value)
    assert msg.startswith("the memory plan cannot fit this topology (8 x 24 GiB, tp 4 x pp 2): a KV pool of "
                          "196608 tokens"), msg
    assert "stage 1: " in msg and "GiB short" in msg and "stage 0:" not in msg, msg
    assert "--pp-size" in msg and "--context-length (now 196608)" in msg and "--max-running-requests (now 16)" in msg
    # negative control: the same topology at 131072 tokens fits (a higher fraction)
    assert float(_value(dry_run(real_headers, caller_env, "--tp-size", "4", "--pp-size", "2", "--context-length",
                              "131072").argv, FLAG)) > 0.89


def test_a_topology_that_cannot_hold_the_weights_is_refused(real_headers, caller_env):
    with pytest.raises(LaunchError, match=r"cannot fit this topology: 6 x 24 GiB \(tp 1 x pp 6\) cannot hold the "
                                          r"model: stage \d+ \(\d+ layers\) needs [\d.]+ GiB .* GiB short"):
        dry_run(real_headers, caller_env, "--pp-size", "6")
