"""``launch`` and the SWA-pool admission rule (:func:`sglang_ampere.memory_plan.swa_pool_rule`,
:mod:`sglang_ampere.launch.swa_pool`): a ratio the user did not set is raised to meet it, one the
user set and that fails it is refused with the numbers, and every fix the refusal names works.

The model is a headers-only copy of DeepSeek-V4-Flash (real config and inventory), so the memory
plan has the real headers where ``--max-total-tokens`` is unset.
"""

from __future__ import annotations

import re

import pytest
from helpers.launch import dry_run

from sglang_ampere import memory_plan as plan_mod
from sglang_ampere.launch.errors import LaunchError
from sglang_ampere.launch.launcher import format_spec, main

pytest.importorskip("sglang")

FLAG = "--swa-full-tokens-ratio"
#: twelve 24 GB cards (the sm86 preset's); the plan's pool there is millions of tokens, so a
#: --max-total-tokens below it is SGLang's pool
TWELVE = ("--pp-size", "12")
SM90_THREE = ("--pp-size", "3")          # three of the sm90 preset's 80 GB cards


def _value(argv, flag):
    i = [k for k, a in enumerate(argv) if a == flag]
    assert len(i) <= 1, f"{flag} appears {len(i)} times in {argv}"
    return argv[i[0] + 1] if i else None


def _pool_of(argv, chunk_default):
    n = int(_value(argv, "--max-total-tokens"))
    ratio = float(_value(argv, FLAG) or plan_mod.SGLANG_DSV4_SWA_RATIO)
    chunk = int(_value(argv, "--chunked-prefill-size") or chunk_default)
    return plan_mod.swa_pool_rule(n, ratio, chunk, 65536)


def test_preset_ratio_is_raised_to_meet_the_rule(real_headers, caller_env):
    """sm86: the preset's 0.05 with --max-total-tokens 8192 is a 256-token pool; C 4096 needs 4608."""
    plan = dry_run(real_headers, caller_env, *TWELVE, "--max-total-tokens", "8192")
    assert _value(plan.argv, FLAG) == "0.5625"
    rule = _pool_of(plan.argv, 4096)
    assert rule.ok and rule.pool == rule.need == 4608
    assert FLAG not in {a.flag for a in plan.preset_args_used}
    text = format_spec(plan)
    line = next(ln for ln in text.splitlines() if ln.startswith(f"# SWA pool: {FLAG} 0.5625"))
    assert "the preset's 0.05" in line and "floor_256(0.05 x 8192) = 256" in line and "= 4608" in line
    # negative control: a pool that meets the rule keeps the preset's ratio and says nothing
    big = dry_run(real_headers, caller_env, *TWELVE, "--max-total-tokens", "131072")
    assert _value(big.argv, FLAG) == "0.05" and not big.swa_args_used
    assert "# SWA pool:" not in format_spec(big)


def test_sglang_default_ratio_and_chunk_size_are_sglangs(real_headers, caller_env):
    """sm90's preset sets neither: SGLang's DeepSeek-V4 ratio 0.1, and its own chunk size for the
    preset's 80 GiB cards (8192), give 1536 of the 8704 tokens needed at 16384."""
    plan = dry_run(real_headers, caller_env, *SM90_THREE, "--max-total-tokens", "16384", gpu="sm90")
    assert plan.swa_args_used and plan.swa_args_used[0][:2] == (FLAG, "0.5313")
    reason = plan.swa_args_used[0][2]
    assert "SGLang's DeepSeek-V4 default 0.1" in reason and "SGLang's 8192 (80 GiB)" in reason
    assert _pool_of(plan.argv, 8192).ok
    ok = dry_run(real_headers, caller_env, *SM90_THREE, "--max-total-tokens", "16384", "--chunked-prefill-size", "1024",
                 gpu="sm90")
    assert not ok.swa_args_used and _value(ok.argv, FLAG) is None          # 0.1 x 16384 = 1536 >= 1536


def test_user_ratio_that_stalls_is_refused_and_every_fix_works(real_headers, caller_env, capsys):
    args = ("--max-total-tokens", "8192", FLAG, "0.5")
    with pytest.raises(LaunchError) as err:
        dry_run(real_headers, caller_env, *TWELVE, *args)
    msg = str(err.value)
    assert msg.startswith(f"{FLAG} 0.5: SWA pool = floor_256(0.5 x 8192) = 4096 tokens")
    assert "max(4 x 256, chunk 4096 + 2 x 256) = 4608" in msg and "stalls a chunked prompt forever" in msg
    fixes = re.findall(r"(--[a-z-]+) (\d+(?:\.\d+)?) or (?:more|less)", msg.split(" Use ", 1)[1])
    assert [f for f, _ in fixes] == [FLAG, "--chunked-prefill-size", "--max-total-tokens"], msg
    assert fixes == [(FLAG, "0.5625"), ("--chunked-prefill-size", "3584"), ("--max-total-tokens", "9216")]
    for flag, value in fixes:
        fixed = dry_run(real_headers, caller_env, *TWELVE, *args, flag, value)   # SGLang's parser: the later value wins
        assert not fixed.swa_args_used
    # one step short of each fix is still refused (the numbers are the least that work)
    for flag, value in (("--max-total-tokens", "8960"), ("--chunked-prefill-size", "3840"), (FLAG, "0.5624")):
        with pytest.raises(LaunchError, match="stalls a chunked prompt forever"):
            dry_run(real_headers, caller_env, *TWELVE, *args, flag, value)
    # through the command: exit 2, the message on stderr
    assert main(["--gpu", "sm86", "--dry-run", "--model-path", str(real_headers), *TWELVE, *args],
                environ=caller_env) == 2
    assert "SWA pool = floor_256(0.5 x 8192)" in capsys.readouterr().err


def test_no_ratio_can_meet_the_rule(real_headers, caller_env):
    """C 4096 at --max-total-tokens 2048 needs a pool larger than the whole pool: refused even though
    the ratio is the launcher's to pick, with the chunk size that fits at ratio 1."""
    with pytest.raises(LaunchError, match=r"no --swa-full-tokens-ratio reaches it .* --max-total-tokens 92160 or more "
                                          r"\(at ratio 0.05\), or --chunked-prefill-size 1536 or less with "
                                          r"--swa-full-tokens-ratio 1"):
        dry_run(real_headers, caller_env, *TWELVE, "--max-total-tokens", "2048")
    fine = dry_run(real_headers, caller_env, *TWELVE, "--max-total-tokens", "2048", "--chunked-prefill-size", "1536",
                   FLAG, "1")
    assert not fine.swa_args_used


def test_unset_max_total_tokens_uses_the_plan_or_says_why_not(real_headers, caller_env, tmp_path):
    bare = tmp_path / "bare.toml"                   # no card size: no memory plan without GPUs
    bare.write_text('[preset]\narch = "sm86"\n')
    unknown = dry_run(real_headers, caller_env, "--preset", str(bare))
    assert any(n.startswith("note: SWA pool rule not checked: --max-total-tokens is unset")
               for n in map(str, unknown.notes)), unknown.notes
    twelve = dry_run(real_headers, caller_env, "--pp-size", "12")
    assert not any("SWA pool rule" in n for n in map(str, twelve.notes)) and not twelve.swa_args_used
    assert _value(twelve.argv, FLAG) == "0.05"            # the plan's pool is millions of tokens


def test_the_smaller_of_max_total_tokens_and_the_planned_pool_counts(real_headers, caller_env):
    """SGLang's pool is min(--max-total-tokens, what memory gives): at TP4 x PP2 on 24 GB the plan's
    pool (about 72 K tokens at 0.89) is what the SWA pool comes from, not an 8 M cap."""
    plan = dry_run(real_headers, caller_env, "--tp-size", "4", "--pp-size", "2", "--mem-fraction-static", "0.89",
                 "--max-total-tokens", "8000000")
    assert plan.swa_args_used, plan.notes
    assert "under --max-total-tokens 8000000" in plan.swa_args_used[0][2]
    # negative control: a cap below the planned pool is the pool (131072 x 0.05 = 6400 >= 4608)
    twelve = dry_run(real_headers, caller_env, "--pp-size", "12", "--max-total-tokens", "131072")
    assert not twelve.swa_args_used and _value(twelve.argv, FLAG) == "0.05"
