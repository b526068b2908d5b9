"""The CPU target's plumbing, without starting a server: when it is taken (and when never), the
stand-in ``sgl_kernel`` and the boot file every server process runs, ``launch --gpu cpu``, and
that the patch README lists every CPU hook. The server itself: ``test_cpu_server*.py``."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from helpers import REPO

from sglang_ampere import cpu_target
from sglang_ampere.cpu_target import sgl_kernel_stub

CPU_ENV = {"SGLANG_AMPERE_TARGET": "cpu", "SGLANG_USE_CPU_ENGINE": "1"}


def test_taken_only_when_asked_for_and_never_with_cuda():
    assert cpu_target.problem({}, cuda_available=False) is None and not cpu_target.requested({})
    assert cpu_target.problem(CPU_ENV, cuda_available=False) is None
    engine_off = cpu_target.problem({"SGLANG_AMPERE_TARGET": "cpu"}, cuda_available=False)
    assert "SGLANG_USE_CPU_ENGINE=1" in engine_off and "launch --gpu cpu" in engine_off
    on_gpu = cpu_target.problem(CPU_ENV, cuda_available=True)
    assert on_gpu is not None and "CUDA is available" in on_gpu
    with pytest.raises(ValueError, match="SGLANG_AMPERE_TARGET"):
        cpu_target.requested({"SGLANG_AMPERE_TARGET": "cpux"})


def test_cpu_patches_register_nothing_unless_the_target_is_active(monkeypatch):
    from sglang_ampere.patches import cpu_engine, cpu_ops

    for k in CPU_ENV:
        monkeypatch.delenv(k, raising=False)
    assert cpu_engine.hooks() == [] and cpu_ops.hooks() == []
    # asked for, but this process looks like a GPU machine: still nothing
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    for k, v in CPU_ENV.items():
        monkeypatch.setenv(k, v)
    assert cpu_engine.hooks() == [] and cpu_ops.hooks() == []


def test_assign_req_to_token_pool_cpu(gen):
    pool = torch.full((5, 40), -1, dtype=torch.int32)
    rows = torch.tensor([3, 0, 4])
    start, end = torch.tensor([2, 0, 7]), torch.tensor([9, 4, 8])
    loc = torch.randint(0, 10_000, (int((end - start).sum()),), generator=gen, dtype=torch.int64)
    sgl_kernel_stub.assign_req_to_token_pool_cpu(rows, pool, start, end, loc, pool.shape[1])
    expect = torch.full((5, 40), -1, dtype=torch.int32)
    o = 0
    for r, s, e in zip(rows.tolist(), start.tolist(), end.tolist()):
        for j in range(s, e):
            expect[r, j] = int(loc[o])
            o += 1
    assert torch.equal(pool, expect)
    # negative control: the same call with the rows in another order writes elsewhere
    other = torch.full((5, 40), -1, dtype=torch.int32)
    sgl_kernel_stub.assign_req_to_token_pool_cpu(rows.flip(0), other, start, end, loc, other.shape[1])
    assert not torch.equal(other, expect)
    with pytest.raises(ValueError, match="bad range"):
        sgl_kernel_stub.assign_req_to_token_pool_cpu(rows, pool, start, end + 40, loc, pool.shape[1])


def test_stub_names_what_is_missing():
    mod = sgl_kernel_stub.make_module()
    with pytest.raises(RuntimeError, match="sgl_kernel.copy_all_layer_kv_cache_cpu .*stand-in"):
        mod.copy_all_layer_kv_cache_cpu()
    assert not hasattr(mod, "__wrapped__")          # dunder probes stay AttributeError


PROBE = r"""
import json, sys
import sgl_kernel
print(json.dumps({"stub": getattr(sgl_kernel, "sglang_ampere_stub", False),
                  "chained": "chained_marker" in sys.modules}))
"""


def _probe(env_extra: dict, tmp_path) -> subprocess.CompletedProcess:
    chained = tmp_path / "chained"
    chained.mkdir(exist_ok=True)
    (chained / "sitecustomize.py").write_text(
        "import sys, types\nsys.modules['chained_marker'] = types.ModuleType('m')\n")
    env = {k: v for k, v in os.environ.items() if k not in CPU_ENV}
    env.update(env_extra, PYTHONPATH=cpu_target.pythonpath(str(chained)))
    return subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, env=env, timeout=120)


def test_boot_file_spells_the_variables_as_envvars_does():
    """The boot file keeps its own literals (it must not import the package in every process)."""
    from sglang_ampere import envvars

    text = (cpu_target.SITE_DIR / "sitecustomize.py").read_text()
    assert f'os.environ.get("{envvars.TARGET}") == "cpu"' in text
    assert f'os.environ.get("{envvars.SGLANG_USE_CPU_ENGINE}") == "1"' in text


def test_boot_file_gives_every_process_the_stub_and_chains_the_next_sitecustomize(tmp_path):
    proc = _probe(CPU_ENV, tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout.splitlines()[-1]) == {"stub": True, "chained": True}
    # negative control: without the CPU target the real (CUDA) sgl_kernel is imported and fails here
    plain = _probe({}, tmp_path)
    assert plain.returncode != 0 and "sgl_kernel" in plain.stderr


def test_launch_gpu_cpu_dry_run(tmp_path):
    from helpers.launch import make_model

    from sglang_ampere.launch import launcher

    model = make_model(tmp_path)
    plan = launcher.build_spec(["--gpu", "cpu", "--dry-run", "--model-path", str(model)], environ={})
    assert plan.arch == "cpu" and plan.gpus == []
    assert plan.env["SGLANG_USE_CPU_ENGINE"] == "1" and plan.env["SGLANG_AMPERE_TARGET"] == "cpu"
    assert plan.env["PYTHONPATH"].split(os.pathsep)[0] == str(cpu_target.SITE_DIR)
    argv = " ".join(plan.argv)
    assert "--device cpu" in argv and "--dsa-topk-backend torch" in argv and "--disable-cuda-graph" in argv
    # no GPU needed without --dry-run either (it would exec the server)
    assert launcher.build_spec(["--gpu", "cpu", "--model-path", str(model)], environ={}).arch == "cpu"


def test_launch_gpu_cpu_refuses_a_conflicting_required_setting(tmp_path):
    from helpers.launch import make_model

    from sglang_ampere.launch import launcher
    from sglang_ampere.launch.errors import LaunchError

    model = make_model(tmp_path)
    with pytest.raises(LaunchError, match=r"^--device cuda cannot serve the cpu target: SGLang's CPU engine"):
        launcher.build_spec(["--gpu", "cpu", "--model-path", str(model), "--", "--device", "cuda"], environ={})
    with pytest.raises(LaunchError, match=r"SGLANG_AMPERE_DECODE_BACKEND=tilelang \(from --env\) cannot serve the "
                                          r"cpu target"):
        launcher.build_spec(["--gpu", "cpu", "--env", "SGLANG_AMPERE_DECODE_BACKEND=tilelang",
                             "--model-path", str(model)], environ={})


def test_patches_readme_lists_every_cpu_hook():
    from sglang_ampere.patches import cpu_engine, cpu_ops

    readme = (REPO / "patches" / "README.md").read_text()
    targets = [t for t, _, _ in cpu_engine.HOOKS] + [t for t, _, _ in cpu_ops.STANDINS]
    missing = [t for t in targets if f"`{t}`" not in readme]
    assert not missing, f"patches/README.md does not list: {missing}"
