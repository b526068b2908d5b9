"""`launch` reads SGLang's arguments with SGLang's own parser: `--config FILE` (YAML) counts as the
user's, the preset never overrides it, and the topology check sees the merged values."""

import pytest
from helpers.launch import smi

from sglang_ampere.launch.argv import dests_of, parse_server_args
from sglang_ampere.launch.launcher import LaunchError, build_spec, format_spec
from sglang_ampere.launch.topology import Topology, check_topology

INDEXER = "SGLANG_AMPERE_INDEXER_BACKEND"


def yaml_file(tmp_path, text, name="server.yaml"):
    f = tmp_path / name
    f.write_text(text)
    return f


def plan_for(model, *extra, gpu="sm86", smi_output=""):
    return build_spec(["--gpu", gpu, "--dry-run", "--model-path", str(model), *extra],
                      environ={"PATH": "/usr/bin"}, smi_output=smi_output)


def test_yaml_value_is_never_overridden_by_the_preset(model, tmp_path):
    cfg = yaml_file(tmp_path, "context-length: 8192\nmax-running-requests: 4\n")
    plan = plan_for(model, "--config", str(cfg))
    # The preset's own values for these two are not on the command line ...
    assert "--context-length" not in plan.argv and "--max-running-requests" not in plan.argv
    assert {a.flag for a in plan.preset_args_kept} == {"--context-length", "--max-running-requests"}
    # ... the rest of the preset still fills in ...
    assert plan.argv[plan.argv.index("--mem-fraction-static") + 1] == "0.85"
    # ... and SGLang's own merge of the exec'd argv yields the YAML values.
    merged = parse_server_args(plan.argv[3:])
    assert merged.values["context_length"] == 8192 and merged.values["max_running_requests"] == 4
    assert "#   --context-length: your value kept over the preset's 65536" in format_spec(plan)


def test_command_line_beats_yaml_and_both_beat_the_preset(model, tmp_path):
    cfg = yaml_file(tmp_path, "context-length: 8192\n")
    plan = plan_for(model, "--config", str(cfg), "--context-length", "4096")
    assert parse_server_args(plan.argv[3:]).values["context_length"] == 4096


def test_yaml_pp_size_counts_in_the_topology_check(model, tmp_path):
    cfg = yaml_file(tmp_path, "pp-size: 12\n")
    with pytest.raises(LaunchError, match=r"--pp-size 12 x --tp-size 1 = 12 GPUs, but this node has 8 GPU\(s\)"):
        plan_for(model, "--config", str(cfg), gpu="sm80", smi_output=smi("a100_sxm4_80gb_x8"))
    # the command line beats the YAML, as in SGLang
    plan = plan_for(model, "--config", str(cfg), "--pp-size", "8", gpu="sm80", smi_output=smi("a100_sxm4_80gb_x8"))
    assert parse_server_args(plan.argv[3:]).values["pp_size"] == 8


def test_yaml_model_path_and_multi_node(model, tmp_path):
    cfg = yaml_file(tmp_path, f"model-path: {model}\npp-size: 12\nnnodes: 3\ndist-init-addr: 10.0.0.1:5000\n")
    plan = build_spec(["--gpu", "sm86", "--dry-run", "--config", str(cfg), "--num-gpus", "4"],
                      environ={}, smi_output="")
    assert len(plan.node_argvs) == 3
    for rank, argv in enumerate(plan.node_argvs):
        assert parse_server_args(argv[3:]).values["node_rank"] == rank


def test_bad_config_files_are_launch_errors(model, tmp_path):
    with pytest.raises(LaunchError, match="Config file not found"):
        plan_for(model, "--config", str(tmp_path / "absent.yaml"))
    with pytest.raises(LaunchError, match="must be YAML"):
        plan_for(model, "--config", str(yaml_file(tmp_path, "x", "server.toml")))
    with pytest.raises(LaunchError, match="--config FILE, not --config=FILE"):
        plan_for(model, f"--config={yaml_file(tmp_path, 'pp-size: 2')}")


def test_unknown_server_argument_is_refused_before_exec(model):
    with pytest.raises(LaunchError, match="SGLang's server arguments: unrecognized arguments: --no-such-flag"):
        plan_for(model, "--no-such-flag", "1")


def test_dsv4_int_is_a_quantization_choice(model):
    assert parse_server_args(["--quantization", "dsv4_int"]).values["quantization"] == "dsv4_int"


def test_aliases_map_to_one_dest():
    assert dests_of(["--tensor-parallel-size", "2"]) == dests_of(["--tp-size", "2"]) == {"tp_size"}


def test_topology_alone():
    topo = Topology(tp=2, pp=6, dp=1, nnodes=2, node_rank=None, dist_init_addr="h:1")
    assert [str(n) for n in check_topology(topo, 8)] == [
        "note: --pp-size 6 x --tp-size 2 = 12 / --nnodes 2 = 6 per node uses 6 of the 8 GPUs on this node"]
    with pytest.raises(LaunchError, match="= 12 GPUs / --nnodes 2 = 6 per node, but this node has 4"):
        check_topology(topo, 4)


# ----------------------------------------------------------------------------- --nsa-indexer-backend


def test_nsa_indexer_flag_sets_the_variable_and_never_reaches_sglang(model):
    plan = plan_for(model, "--nsa-indexer-backend", "torch")
    assert {c.name: (c.new, c.source) for c in plan.changes}[INDEXER] == ("torch", "--nsa-indexer-backend")
    assert not any(a.startswith("--nsa") for a in plan.argv)
    assert "# C4 indexer below sm_90: torch" in format_spec(plan)
    plan = plan_for(model, "--", "--nsa-indexer-backend=torch")
    assert plan.env[INDEXER] == "torch" and not any(a.startswith("--nsa") for a in plan.argv)


def test_nsa_indexer_flag_conflicts_and_choices(model):
    with pytest.raises(LaunchError, match=f"contradicts --env {INDEXER}=tilelang"):
        plan_for(model, "--nsa-indexer-backend", "torch", "--env", f"{INDEXER}=tilelang")
    with pytest.raises(LaunchError, match="--nsa-indexer-backend must be one of torch, tilelang"):
        plan_for(model, "--", "--nsa-indexer-backend", "deepgemm")
    with pytest.raises(SystemExit):
        plan_for(model, "--nsa-indexer-backend", "deepgemm")
    with pytest.raises(LaunchError, match=f"{INDEXER}='x' is not one of torch, tilelang"):
        plan_for(model, "--env", f"{INDEXER}=x")


def test_hack_variable_does_not_touch_the_indexer(model):
    plan = build_spec(["--gpu", "sm86", "--dry-run", "--model-path", str(model)],
                      environ={"SGLANG_HACK_FLASHMLA_BACKEND": "torch"}, smi_output="")
    assert INDEXER not in plan.env
