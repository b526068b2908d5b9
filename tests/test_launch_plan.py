"""``launch`` with the memory plan and ``--speculative``, checked by SGLang's own argument validation.

The model is a headers-only dsv4_int copy of DeepSeek-V4-Flash (real config and inventory), so
SGLang's resolution reads the real ``config.json`` and the plan the real headers.
"""

from __future__ import annotations

import json

import pytest
from helpers.launch import dry_run

from sglang_ampere.launch.errors import LaunchError
from sglang_ampere.launch.launcher import build_spec, format_spec
from sglang_ampere.launch.speculative import validate

pytest.importorskip("sglang")

ARCHES = ("sm80", "sm86", "sm89", "sm90", "sm120")
#: one pipeline stage that holds the real model on every preset's card (pp 1 on one card does not)
ONE_STAGE = ("--tp-size", "8")
#: the 24 GB presets (sm89 extends sm86), where that stage lacks 0.39 GiB for the MTP draft (plan's figures)
ONE_STAGE_SHORT_WITH_MTP = ("sm86", "sm89")


def test_pp12_sets_the_partition_plan_computes(real_headers, caller_env, capsys):
    from sglang_ampere.cli import main

    assert main(["plan", str(real_headers), "--gpus", "12x24", "--json"]) == 0, "plan exits 0"
    doc = json.loads(capsys.readouterr().out)
    plan = dry_run(real_headers, caller_env, "--pp-size", "12")
    change = {c.name: c for c in plan.changes}.get("SGLANG_PP_LAYER_PARTITION")
    assert change is not None and change.new == doc["SGLANG_PP_LAYER_PARTITION"], (
        f"launch set {change}, plan says {doc['SGLANG_PP_LAYER_PARTITION']}")
    assert plan.env["SGLANG_PP_LAYER_PARTITION"] == ",".join(map(str, doc["partition"])), "env carries it"
    text = format_spec(plan)
    assert "# stage  layers" in text and text.count("\n#    ") >= 12, "the dry run shows the per-stage table"
    assert "SGLANG_PP_LAYER_PARTITION=" + change.new + " \\" in text, "the command sets it"


def test_user_partition_is_kept_and_pp1_sets_none(real_headers, caller_env):
    mine = "4,4,4,4,4,4,4,4,4,3,0,0"
    plan = dry_run(real_headers, {**caller_env, "SGLANG_PP_LAYER_PARTITION": "3,3,3,3,3,4,4,4,4,4,4,4"},
                   "--pp-size", "12")
    assert "SGLANG_PP_LAYER_PARTITION" not in {c.name for c in plan.changes}, "the user's split wins"
    assert any("keeping your SGLANG_PP_LAYER_PARTITION" in n for n in map(str, plan.notes)), f"notes {plan.notes}"
    assert "split.user-kept" in {n.code for n in plan.notes}, f"notes {plan.notes}"
    plan = dry_run(real_headers, caller_env, "--pp-size", "12", "--env", f"SGLANG_PP_LAYER_PARTITION={mine}")
    assert plan.env["SGLANG_PP_LAYER_PARTITION"] == mine, "--env wins"
    one = dry_run(real_headers, caller_env, *ONE_STAGE)
    assert "SGLANG_PP_LAYER_PARTITION" not in one.env, "pp 1 has no split"
    assert "tp 8 x pp 1" in one.stage_table and "SGLANG_PP_LAYER_PARTITION" not in one.stage_table, one.stage_table


def test_pp1_gets_the_memory_plan_and_one_card_is_refused(real_headers, caller_env, tmp_path):
    """pp 1 is planned like any pipeline: eight 24 GB cards at tp 8 keep 0.53 GiB for the KV cache, so
    the launcher raises --mem-fraction-static to where a 65,536-token pool fits; one card cannot hold
    the 155 GiB of weights and is refused with the numbers, before SGLang would load until it runs out."""
    eight = dry_run(real_headers, caller_env, *ONE_STAGE)
    assert [m[0] for m in eight.mem_args_used] == ["--mem-fraction-static"], eight.mem_args_used
    assert 0.89 <= float(eight.mem_args_used[0][1]) <= 0.92, eight.mem_args_used
    assert "tp 8 x pp 1" in eight.mem_args_used[0][2], eight.mem_args_used
    with pytest.raises(LaunchError, match=r"cannot fit this topology: 1 x 24 GiB \(tp 1 x pp 1\) cannot hold the "
                                          r"model: stage 0 \(43 layers\) needs 157\.\d\d GiB .* add GPUs"):
        dry_run(real_headers, caller_env)
    # a preset without a card size makes no plan without GPUs, and says so
    bare = tmp_path / "bare.toml"
    bare.write_text('[preset]\narch = "sm86"\n')
    unknown = dry_run(real_headers, caller_env, "--preset", str(bare))
    assert any(n.code == "split.no-memory" and "no memory plan is made" in n.text for n in unknown.notes), unknown.notes
    assert not unknown.mem_args_used and not unknown.stage_table


def test_warns_when_context_times_concurrency_does_not_fit(real_headers, caller_env):
    plan = dry_run(real_headers, caller_env, "--pp-size", "12", "--context-length", "1048576",
                   "--max-running-requests", "256")
    assert any(n.startswith("warning: --context-length 1048576 x --max-running-requests 256 does not fit")
               for n in map(str, plan.notes)), f"notes {plan.notes}"
    # the plan's own note on the same shortfall is not repeated (the launcher's sentence replaces it)
    assert [n.code for n in plan.notes].count("plan.kv-does-not-fit") == 1, f"notes {plan.notes}"


@pytest.mark.parametrize("spec", ["none", "mtp"])
@pytest.mark.parametrize("pp", [1, 12])
@pytest.mark.parametrize("arch", ARCHES)
def test_every_preset_argv_passes_sglangs_own_validation(real_headers, caller_env, arch, pp, spec):
    topo = ONE_STAGE if pp == 1 else ("--pp-size", str(pp))
    args = ["--gpu", arch, "--dry-run", "--model-path", str(real_headers), *topo, "--speculative", spec]
    if pp == 1 and spec == "mtp" and arch in ONE_STAGE_SHORT_WITH_MTP:
        with pytest.raises(LaunchError, match=r"8 x 24 GiB \(tp 8 x pp 1\) cannot hold the model"):
            build_spec(args, environ=caller_env, smi_output="")
        return
    plan = build_spec(args, environ=caller_env, smi_output="")
    validate(plan.argv[3:], plan.env)       # raises LaunchError with SGLang's reason if refused
    algo = "--speculative-algorithm" in plan.argv
    assert algo == (spec == "mtp"), f"{arch} pp {pp} {spec}: argv {plan.argv}"
    assert (plan.env.get("SGLANG_ENABLE_PP_SPEC") == "1") == (spec == "mtp" and pp > 1), (
        f"{arch} pp {pp} {spec}: SGLANG_ENABLE_PP_SPEC={plan.env.get('SGLANG_ENABLE_PP_SPEC')}")
    assert ("SGLANG_PP_LAYER_PARTITION" in plan.env) == (pp > 1), f"{arch} pp {pp}: partition set iff pp > 1"


def test_refused_combinations_get_sglangs_reason_and_the_fix(real_headers, caller_env):
    with pytest.raises(LaunchError, match=r"refuses this combination: DSpark pipeline parallelism .* To fix: use "
                                          r"--speculative mtp"):
        dry_run(real_headers, caller_env, "--pp-size", "12", "--speculative", "dspark")
    with pytest.raises(LaunchError, match=r"topk == 1 .* To fix: use --speculative-eagle-topk 1"):
        # SGLang's verdict comes before the memory plan's, which would refuse one 24 GB card
        dry_run(real_headers, caller_env, "--speculative", "mtp", "--speculative-eagle-topk", "2")
    with pytest.raises(LaunchError, match=r"only supported on prefill nodes.* To fix: set SGLANG_ENABLE_PP_SPEC=1"):
        dry_run(real_headers, {**caller_env, "SGLANG_ENABLE_PP_SPEC": "0"}, "--pp-size", "12", "--speculative", "mtp")
    with pytest.raises(LaunchError, match="contradicts"):
        dry_run(real_headers, caller_env, "--speculative", "mtp", "--speculative-algorithm", "DSPARK")


def test_eagle_given_directly_over_pp_gets_the_pp_spec_variable(real_headers, caller_env):
    plan = dry_run(real_headers, caller_env, "--pp-size", "12", "--speculative-algorithm", "EAGLE",
                   "--speculative-num-steps", "2", "--speculative-eagle-topk", "1",
                   "--speculative-num-draft-tokens", "3")
    assert plan.env.get("SGLANG_ENABLE_PP_SPEC") == "1", "EAGLE over pp 12 needs SGLANG_ENABLE_PP_SPEC=1"
    assert plan.argv.count("--speculative-num-steps") == 1 and "2" in plan.argv, "the user's values are kept"


def test_tp_times_pp_over_nodes(real_headers, caller_env):
    plan = dry_run(real_headers, caller_env, "--tp-size", "4", "--pp-size", "2", "--nnodes", "2",
                   "--dist-init-addr", "10.0.0.1:5000", "--num-gpus", "4")
    # 22,21 since the RoPE tables are counted at the served length (patches/dsv4_rope.py): stage 0
    # holds both RoPE kinds, which cost 768 MiB there at 1M rows and 48 MiB at 65,536
    assert plan.env.get("SGLANG_PP_LAYER_PARTITION") == "22,21", f"split {plan.env.get('SGLANG_PP_LAYER_PARTITION')}"
    assert "tp 4 x pp 2 over 2 nodes" in plan.stage_table, plan.stage_table
    text = format_spec(plan)
    assert text.count("SGLANG_PP_LAYER_PARTITION=22,21 \\") == 2, "both nodes' commands carry the split"
    assert any("does not fit" in n for n in map(str, plan.notes)), "TP4 x PP2 on 24 GB cannot hold 65536 x 16"


def _as_0731(real_headers, tmp_path):
    """The same headers under a config that declares V4-Flash-0731's DSpark drafter."""
    d = tmp_path / "v4_0731"
    d.mkdir()
    for f in real_headers.iterdir():
        if f.name != "config.json":
            (d / f.name).symlink_to(f)
    cfg = json.loads((real_headers / "config.json").read_text())
    cfg.update(dspark_block_size=4, dspark_target_layer_ids=[10, 20, 30], dspark_markov_rank=256)
    (d / "config.json").write_text(json.dumps(cfg))
    return d


def test_draft_must_match_what_mtp_holds(real_headers, caller_env, tmp_path):
    """EAGLE cannot load 0731's DSpark drafter: SGLang's own checks pass it (it fails later, loading the
    draft), so the launcher refuses it. DSpark on V4-Flash, which has no drafter, SGLang refuses itself.
    A draft checkpoint the user names is the user's call. The refusals come before the memory plan
    (one 24 GB card); what is accepted runs on sm90's 80 GB cards, where one stage holds either draft."""
    v0731 = _as_0731(real_headers, tmp_path)
    with pytest.raises(LaunchError, match=r"EAGLE: this checkpoint \(V4-Flash-0731\) holds a DSpark drafter"):
        dry_run(v0731, caller_env, "--speculative", "mtp")
    with pytest.raises(LaunchError, match="DSpark dense speculative decoding requires setting "
                                          "--speculative-draft-model-path"):
        dry_run(real_headers, caller_env, "--speculative", "dspark")
    dspark = dry_run(v0731, caller_env, *ONE_STAGE, "--speculative", "dspark", gpu="sm90")
    assert "DSPARK" in dspark.argv, f"argv {dspark.argv}"
    named = dry_run(real_headers, caller_env, *ONE_STAGE, "--speculative", "dspark", "--speculative-draft-model-path",
                    str(v0731), gpu="sm90")
    assert "DSPARK" in named.argv, "a named draft checkpoint is the user's call"
