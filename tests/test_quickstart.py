"""``sglang-ampere quickstart [DIR]``: synth -> convert -> audit with SNR, then what to run next."""

import json

from helpers.convert import run_cli


def test_quickstart_end_to_end_and_rerun(tmp_path):
    root = tmp_path / "qs"
    res = run_cli("quickstart", root, "--quiet")
    assert res.returncode == 0, res.stderr
    out = res.stdout
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
    again = run_cli("quickstart", root, "--quiet")
    assert again.returncode == 0, again.stderr
    assert "reusing" in again.stdout and "0 shard(s) converted, 4 kept" in again.stdout
