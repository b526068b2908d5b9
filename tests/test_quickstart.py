"""``sglang-ampere quickstart [DIR]``: synth -> convert -> audit with SNR, then what to run next."""

import json
import subprocess

import pytest
from helpers import PY, REPO
from helpers.convert import run_cli
from helpers.cpu_server import server_env


def test_quickstart_end_to_end_and_rerun(tmp_path):
    root = tmp_path / "qs"
    res = run_cli("quickstart", root, "--quiet", "--no-serve")
    assert res.returncode == 0, res.stderr
    out = res.stdout
    assert "[4/4] eval" in out and "(serve step skipped: --no-serve)" in out and "[5/" not in out
    ckpt = (root / "dsv4_int").resolve()
    assert f"dsv4_int checkpoint: {ckpt}" in out
    assert "fidelity expert_int4: SNR dB" in out and "OK: no problems found" in out
    assert "sglang-ampere launch --gpu sm86" in out and str(ckpt) in out.split("next:", 1)[1]
    native_line = out.split("without conversion", 1)[1].splitlines()[1]
    assert native_line.strip().startswith("sglang-ampere launch --gpu sm86 --dry-run --model-path")
    assert native_line.strip().split("--model-path ", 1)[1].endswith("native")
    # ... and the reference forward's figures of the conversion against its source
    kl = float(out.split("KL(REF || MODEL) nats/token: mean ", 1)[1].split()[0])
    top1 = float(out.split("top-1 agreement: ", 1)[1].split()[0])
    assert 0 < kl < 1 and 0 < top1 <= 1 and "hidden-state SNR dB per layer:" in out
    cfg = json.loads((ckpt / "config.json").read_text())
    assert cfg["quantization_config"]["quant_method"] == "dsv4_int"
    # Running it again reuses the synthetic model and resumes (nothing to convert).
    again = run_cli("quickstart", root, "--quiet", "--no-serve")
    assert again.returncode == 0, again.stderr
    assert "reusing" in again.stdout and "0 shard(s) converted, 4 kept" in again.stdout


@pytest.mark.slow
@pytest.mark.cpu_server
def test_quickstart_ends_by_serving_on_the_cpu(tmp_path):
    """The README's first command: with the serve extra installed it ends by starting SGLang's real
    server on this CPU through launch, one chat request and one logprob check, and stops it."""
    root = tmp_path / "qs"
    res = subprocess.run([PY, "-m", "sglang_ampere", "quickstart", str(root), "--quiet"], capture_output=True,
                         text=True, timeout=1800, env=server_env(OMP_NUM_THREADS="1"), cwd=str(REPO))
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    out = res.stdout
    assert "[5/5] serve" in out and "sglang-ampere launch --gpu cpu" in out
    assert "logprob check: PASS" in out and "time to first token" in out and "server stopped" in out
    assert (root / "logs" / "server.log").is_file()
    left = subprocess.run(["pgrep", "-f", f"sglang.launch_server --model-path {root}"], capture_output=True, text=True)
    assert left.stdout.strip() == "", "the quickstart left its server running"
