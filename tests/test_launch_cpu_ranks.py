"""``launch --gpu cpu`` with several server ranks (``--pp-size 2``): what the launcher adds so SGLang's
CPU engine starts them (each rank's CPUs), and the layer split from the memory plan, computed for
the host's RAM shared by the ranks (there is no GPU memory figure on this target)."""

from __future__ import annotations

import pytest

from sglang_ampere.launch.launcher import build_spec
from sglang_ampere.launch.resolve import THREADS_BIND_VAR, EnvChange, add_cpu_threads, cpu_threads_bind

pytest.importorskip("sglang")


def test_threads_bind_splits_the_cpus_among_the_ranks():
    assert cpu_threads_bind(2, [0, 1]) == "0|1"
    assert cpu_threads_bind(2, [3, 0, 1, 2, 4]) == "0,1,2|3,4"
    assert cpu_threads_bind(3, [0, 1]) == "0|1|0"           # fewer CPUs than ranks: shared
    assert cpu_threads_bind(1, [0, 1]) == "0,1"
    for bad in ((0, [0]), (2, [])):
        with pytest.raises(ValueError):
            cpu_threads_bind(*bad)


def test_threads_bind_only_when_ranks_exceed_numa_nodes_and_the_user_set_none():
    env: dict[str, str] = {}
    changes: list[EnvChange] = []
    add_cpu_threads(env, changes, 1, nodes=1, cpus=[0, 1])
    add_cpu_threads(env, changes, 2, nodes=2, cpus=[0, 1])      # SGLang's default: a node per rank
    assert env == {} and changes == []
    add_cpu_threads(env, changes, 2, nodes=1, cpus=[0, 1])
    assert env == {THREADS_BIND_VAR: "0|1"} and [c.name for c in changes] == [THREADS_BIND_VAR]
    mine = {THREADS_BIND_VAR: "0-7|8-15"}
    add_cpu_threads(mine, [], 2, nodes=1, cpus=[0, 1])
    assert mine == {THREADS_BIND_VAR: "0-7|8-15"}


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    import subprocess

    from sglang_ampere import server_probe as sp

    native = tmp_path_factory.mktemp("cpu-ranks") / "native"
    subprocess.run(sp.cli("synth", str(native), "--quiet"), check=True, timeout=300)
    return native


def _plan(ckpt, *args, environ=None):
    return build_spec(["--gpu", "cpu", "--dry-run", *args, "--", "--model-path", str(ckpt)],
                      environ=environ if environ is not None else {"PATH": "/usr/bin"}, smi_output="")


def test_cpu_pp2_sets_the_bind_and_the_plan_partition(ckpt, monkeypatch):
    from sglang_ampere.launch import resolve

    monkeypatch.setattr(resolve, "numa_nodes", lambda: 1)
    plan = _plan(ckpt, "--pp-size", "2")
    assert THREADS_BIND_VAR in plan.env and plan.env[THREADS_BIND_VAR].count("|") == 1
    # the plan computed a split for the host's RAM (no "0 GiB cannot hold the model" warning)
    assert plan.env.get("SGLANG_PP_LAYER_PARTITION") == "2,2", plan.notes
    assert not [n for n in map(str, plan.notes) if "cannot hold" in n], plan.notes
    # with MTP the draft sits on the last stage: the plan moves a layer off it
    spec = _plan(ckpt, "--pp-size", "2", "--speculative", "mtp")
    assert spec.env.get("SGLANG_PP_LAYER_PARTITION") == "3,1", spec.notes
    assert spec.env.get("SGLANG_ENABLE_PP_SPEC") == "1"
    # negative controls: one rank sets neither; the user's own bind and split are kept
    one = _plan(ckpt)
    assert THREADS_BIND_VAR not in one.env and "SGLANG_PP_LAYER_PARTITION" not in one.env
    mine = _plan(ckpt, "--pp-size", "2", "--env", f"{THREADS_BIND_VAR}=1|0", "--env", "SGLANG_PP_LAYER_PARTITION=1,3")
    assert mine.env[THREADS_BIND_VAR] == "1|0" and mine.env["SGLANG_PP_LAYER_PARTITION"] == "1,3"
