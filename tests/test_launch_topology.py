"""Topology arithmetic (pp x tp (x dp) vs GPUs x nodes) and multi-node commands."""

import io
import shlex

import pytest
from helpers.launch import PY, smi

from sglang_ampere.launch.launcher import LaunchError, build_spec, main


def plan(model, *args, smi_output=None, dry=True, gpu="sm86"):
    argv = ["--gpu", gpu] + (["--dry-run"] if dry else []) + ["--model-path", str(model), *args]
    return build_spec(argv, environ={"PATH": "/usr/bin"},
                      smi_output=smi("rtx3090_x12") if smi_output is None else smi_output)


def test_one_node_twelve_gpus(model):
    p = plan(model, "--pp-size", "12")
    assert not any("uses" in n and "GPUs on this node" in n for n in map(str, p.notes))
    assert p.node_argvs == []


def test_too_many_gpus_shows_the_arithmetic(model):
    with pytest.raises(LaunchError, match=r"--pp-size 12 x --tp-size 1 = 12 GPUs, but this node has 8 GPU\(s\)"):
        plan(model, "--pp-size", "12", smi_output=smi("a100_sxm4_80gb_x8"), gpu="sm80")


def test_dp_replicas_multiply(model):
    with pytest.raises(LaunchError, match=r"--pp-size 4 x --tp-size 2 x --dp-size 2 = 16 GPUs, but this node has 12"):
        plan(model, "--pp-size", "4", "--tp-size", "2", "--dp-size", "2")


def test_dp_attention_does_not_multiply(model):
    p = plan(model, "--tp-size", "4", "--pp-size", "3", "--dp-size", "4", "--enable-dp-attention")
    assert p.argv.count("--enable-dp-attention") == 1


def test_aliases_are_understood(model):
    with pytest.raises(LaunchError, match=r"--pp-size 7 x --tp-size 2 = 14 GPUs"):
        plan(model, "--pipeline-parallel-size=7", "--tensor-parallel-size", "2")


def test_fewer_gpus_than_present_is_a_note(model):
    p = plan(model, "--pp-size", "8")
    assert "note: --pp-size 8 x --tp-size 1 = 8 uses 8 of the 12 GPUs on this node" in map(str, p.notes)
    assert [n.code for n in p.notes if "GPUs on this node" in n.text] == ["launch.gpus-unused"], p.notes


def test_not_divisible_by_nodes(model):
    with pytest.raises(LaunchError, match=r"= 10 GPUs cannot be split over --nnodes 3 \(10 / 3 is not whole\)"):
        plan(model, "--pp-size", "10", "--nnodes", "3", "--dist-init-addr", "10.0.0.1:5000", smi_output="")


def test_per_node_more_than_local(model):
    with pytest.raises(LaunchError, match=r"= 12 GPUs / --nnodes 2 = 6 per node, but this node has 4"):
        plan(model, "--pp-size", "12", "--nnodes", "2", "--dist-init-addr", "h:1", smi_output=smi("rtx3090_x4"))


def test_multi_node_needs_dist_init_addr(model):
    with pytest.raises(LaunchError, match="--nnodes 3 needs --dist-init-addr HOST:PORT"):
        plan(model, "--pp-size", "12", "--nnodes", "3", "--num-gpus", "4")


def test_node_rank_range(model):
    with pytest.raises(LaunchError, match=r"--node-rank 3 is out of range for --nnodes 3 \(0..2\)"):
        plan(model, "--pp-size", "12", "--nnodes", "3", "--node-rank", "3", "--dist-init-addr", "h:1",
             "--num-gpus", "4")
    with pytest.raises(LaunchError, match="--node-rank 1 without --nnodes"):
        plan(model, "--pp-size", "4", "--node-rank", "1")


def test_multi_node_dp_replicas_refused(model):
    with pytest.raises(LaunchError, match="data-parallel replicas on one node only"):
        plan(model, "--pp-size", "2", "--dp-size", "2", "--nnodes", "2", "--dist-init-addr", "h:1", "--num-gpus", "2")


@pytest.mark.parametrize("flag, value, msg", [
    ("--pp-size", "0", "--pp-size must be >= 1"), ("--tp-size", "two", "not an integer"),
    ("--nnodes", "-1", "--nnodes must be >= 1")])
def test_bad_sizes(model, flag, value, msg):
    with pytest.raises(LaunchError, match=msg):
        plan(model, flag, value)


def test_num_gpus_overrides_detection(model):
    with pytest.raises(LaunchError, match="this node has 2 GPU"):
        plan(model, "--pp-size", "4", "--num-gpus", "2")


def test_three_nodes_of_four_dry_run_prints_every_node(model, capsys):
    args = ["--gpu", "sm86", "--dry-run", "--model-path", str(model), "--pp-size", "12", "--nnodes", "3",
            "--dist-init-addr", "10.0.0.1:5000", "--num-gpus", "4"]
    p = build_spec(args, environ={}, smi_output="")
    assert len(p.node_argvs) == 3
    for rank, argv in enumerate(p.node_argvs):
        assert argv[:3] == [PY, "-m", "sglang.launch_server"]
        assert argv[argv.index("--node-rank") + 1] == str(rank) and argv.count("--node-rank") == 1
        assert argv[3:11] == ["--model-path", str(model), "--pp-size", "12", "--nnodes", "3",
                              "--dist-init-addr", "10.0.0.1:5000"]
    out = io.StringIO()
    assert main(args, environ={}, stdout=out) == 0
    text = out.getvalue()
    assert [l for l in text.splitlines() if l.startswith("# node ")] == ["# node 0 of 3:", "# node 1 of 3:",
                                                                         "# node 2 of 3:"]
    commands = [shlex.split(c.replace("\\\n", " ")) for c in text.split("# node ")[1:]]
    assert [c[c.index("--node-rank") + 1] for c in commands] == ["0", "1", "2"]


def test_given_node_rank_dry_run_still_shows_all_nodes(model):
    p = build_spec(["--gpu", "sm86", "--dry-run", "--model-path", str(model), "--pp-size", "12", "--nnodes", "3",
                    "--node-rank=1", "--dist-init-addr", "h:1", "--num-gpus", "4"], environ={}, smi_output="")
    assert [a for argv in p.node_argvs for a in argv if a.startswith("--node-rank")] == \
        ["--node-rank=0", "--node-rank=1", "--node-rank=2"]
    assert "--node-rank=1" in p.argv


def test_multi_node_exec_needs_node_rank(model):
    with pytest.raises(LaunchError, match="needs --node-rank on each node"):
        plan(model, "--pp-size", "12", "--nnodes", "3", "--dist-init-addr", "h:1", smi_output=smi("rtx3090_x4"),
             dry=False)


def test_multi_node_exec_passes_through(model):
    p = plan(model, "--pp-size", "12", "--nnodes", "3", "--node-rank", "2", "--dist-init-addr", "10.0.0.1:5000",
             smi_output=smi("rtx3090_x4"), dry=False)
    assert p.argv[3:13] == ["--model-path", str(model), "--pp-size", "12", "--nnodes", "3", "--node-rank", "2",
                            "--dist-init-addr", "10.0.0.1:5000"]
