"""The real thing: `sglang-ampere launch` execs SGLang's server entry point.

`launch --gpu sm86 -- --help` needs no GPU and no model: SGLang builds its full argument parser
(after loading general plugins) and prints it. The help must list `dsv4_int` among the
`--quantization` choices, which proves the launched process loaded our plugin; a second run with
`--env SGLANG_PLUGINS=...` that excludes the plugin must not list it, which proves the launcher's
environment reached SGLang.
"""

import re
import subprocess
import sys
from pathlib import Path

import pytest
from helpers.launch import fake_nvidia_smi

from sglang_ampere.gpus import PRESET_TARGETS
from sglang_ampere.launch.presets import load_builtin

pytestmark = pytest.mark.slow
CLI = Path(sys.executable).parent / "sglang-ampere"


def launch(tmp_path, *args) -> subprocess.CompletedProcess:
    env = fake_nvidia_smi(tmp_path, None)        # an nvidia-smi that lists no GPU
    cmd = [str(CLI)] if CLI.exists() else [sys.executable, "-m", "sglang_ampere.cli"]
    return subprocess.run(cmd + ["launch", *args], capture_output=True, text=True, env=env, timeout=300)


def quantization_choices(help_text: str) -> list[str]:
    m = re.search(r"--quantization \{([^}]*)\}", help_text)
    assert m, "SGLang's help has no --quantization choices:\n" + help_text[:2000]
    return m.group(1).split(",")


@pytest.fixture(scope="module")
def sglang_help(tmp_path_factory):
    proc = launch(tmp_path_factory.mktemp("exec"), "--gpu", "sm86", "--", "--help")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "usage:" in proc.stdout and "--model-path" in proc.stdout
    return proc.stdout


def test_launch_execs_sglang_and_plugin_registers_dsv4_int(sglang_help):
    assert "dsv4_int" in quantization_choices(sglang_help)


def test_environment_reaches_the_launched_process(tmp_path, sglang_help):
    proc = launch(tmp_path, "--gpu", "sm86", "--env", "SGLANG_PLUGINS=no_such_plugin", "--", "--help")
    assert proc.returncode == 0, proc.stderr[-3000:]
    choices = quantization_choices(proc.stdout)
    assert "fp8" in choices and "dsv4_int" not in choices


@pytest.mark.parametrize("arch", PRESET_TARGETS)
def test_preset_server_flags_exist_in_pinned_sglang(arch, sglang_help):
    for a in load_builtin(arch).args:
        assert re.search(rf"(^|\s|\[){re.escape(a.flag)}[\s,=\]]", sglang_help, re.M), \
            f"{arch}: {a.flag} is not an SGLang 0.5.23 server flag"


def test_python_dash_m_entry_point_dry_run(tmp_path):
    from helpers.launch import make_model

    model = make_model(tmp_path)
    env = fake_nvidia_smi(tmp_path, "rtx3090_x12")
    env["SGLANG_JIT_CACHE_DIR"] = str(tmp_path / "jit")
    proc = subprocess.run([sys.executable, "-m", "sglang_ampere.launch", "--dry-run", "--model-path", str(model),
                           "--pp-size", "12"], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "# GPUs on this node: 12 x NVIDIA GeForce RTX 3090 (sm86, 24 GiB)" in proc.stdout
    assert "# sglang-ampere launch: preset sm86" in proc.stdout
    assert proc.stdout.rstrip().endswith("--chunked-prefill-size 4096")
