"""``sglang-ampere audit``: native plan from headers alone (the full-size model in seconds),
converted checks with a non-zero exit listing problems, and --against SNR."""

import json
import time

import pytest
from helpers.convert import cli, copy_ckpt, first_name, mutate_shard, shard_of

from sglang_ampere.convert.audit import audit
from sglang_ampere.inventory import native_inventory
from sglang_ampere.safetensors_io import OutTensor, build_header, file_size
from sglang_ampere.synth import REAL, make_config, plan_shards


def _sparse_real_checkpoint(root):
    """The real DeepSeek-V4-Flash inventory in 46 shards whose data are holes: about 160 GB
    apparent, nothing on disk; only a header-only reader can audit it quickly."""
    config = make_config(REAL)
    inv = native_inventory(config)
    root.mkdir()
    (root / "config.json").write_text(json.dumps(config))
    total = 0
    for i, group in enumerate(plan_shards(inv, 46)):
        specs = []
        for s in group:
            specs.append(s)
            if s.role != "preserved":
                specs.append(inv[s.name[: -len("weight")] + "scale"])
        shard = [OutTensor(s.name, s.dtype, s.shape) for s in specs]
        path = root / f"model-{i + 1:05d}-of-00046.safetensors"
        with open(path, "wb") as f:
            f.write(build_header(shard))
            f.truncate(file_size(shard))
        total += sum(t.nbytes for t in shard)
    return root, inv, total


def test_native_plan_of_the_full_size_model_from_headers_in_seconds(tmp_path, capsys):
    root, inv, total = _sparse_real_checkpoint(tmp_path / "real")
    t = time.time()
    rc = cli("audit", root, "--json")
    elapsed = time.time() - t
    rep = json.loads(capsys.readouterr().out)
    assert rc == 0 and rep["ok"], rep["problems"]
    assert elapsed < 30
    c = rep["counts"]
    # The audit of the real snapshot: 33,792 expert weights + scales, 375 dense pairs.
    assert c["expert_weight"] == c["expert_scale"] == 33792
    assert c["dense_weight"] == c["dense_scale"] == 44 * 8 + 21 + 2
    assert rep["tensors"] == len(inv) and len(rep["shards"]) == 46
    assert rep["source_bytes"] > total > 150e9
    # INT4 + BF16 g32 is 4.5 bits/weight vs MXFP4's 4.25: experts grow by 1/17.
    assert 150e9 < rep["output_bytes"] < 175e9


def test_native_text_report_and_problems(native, tmp_path, capsys):
    assert cli("audit", native) == 0
    out = capsys.readouterr().out
    assert "routed experts MXFP4" in out and "output size" in out and "OK: no problems found" in out
    bad = copy_ckpt(native, tmp_path / "bad")
    name = first_name(bad, lambda n: n.endswith("wkv.scale") and n.startswith("layers.1."))
    mutate_shard(shard_of(bad, name), lambda t: t.pop(name))
    assert cli("audit", bad) == 1
    out = capsys.readouterr().out
    assert "layers.1.attn.wkv.weight" in out and "weight without its scale" in out


def test_converted_counts_and_fidelity(native, converted, capsys):
    assert cli("audit", converted, "--against", native, "--sample", "0", "--json") == 0
    rep = json.loads(capsys.readouterr().out)
    cfg = json.loads((native / "config.json").read_text())
    inv = native_inventory(cfg)
    n_exp = sum(1 for n in inv if ".experts." in n and n.endswith(".weight"))
    assert rep["counts"]["expert_int4"] == n_exp and rep["counts"]["missing_scales"] == 0
    assert rep["counts"]["dense_int8_block"] == sum(
        1 for s in inv.values() if s.role == "dense" and s.name.endswith(".weight")
    )
    f = rep["fidelity"]
    assert (
        f["expert_int4"]["tensors"] == n_exp
        and 17 < f["expert_int4"]["snr_db_min"] <= f["expert_int4"]["snr_db_median"]
    )
    assert f["expert_int4"]["snr_db_median"] > 22.5
    assert f["dense_int8_block"]["snr_db_median"] > 20
    assert f["preserved"]["identical"] == f["preserved"]["tensors"] > 0


def test_sampling_picks_the_requested_number(native, converted):
    rep, problems = audit(converted, native, sample=3)
    assert not problems
    assert rep["fidelity"]["expert_int4"]["tensors"] == 3
    assert rep["fidelity"]["expert_int4"]["of"] > 3


def test_converted_problems_exit_non_zero_and_are_listed(converted, tmp_path, capsys):
    bad = copy_ckpt(converted, tmp_path / "bad")
    name = first_name(bad, lambda n: ".experts.1.w3.scale" in n)
    shard = shard_of(bad, name)
    mutate_shard(shard, lambda t: t.pop(name))
    cfg = json.loads((bad / "config.json").read_text())
    cfg["expert_dtype"] = "fp4"
    del cfg["quantization_config"]["routed_experts_quant_method"]
    (bad / "config.json").write_text(json.dumps(cfg))
    assert cli("audit", bad) == 1
    out = capsys.readouterr().out
    assert f"missing scale {name}" in out
    assert "expert_dtype is 'fp4'" in out
    assert "routed_experts_quant_method" in out
    assert f"index: {name} is mapped to {shard.name} but is in no shard" in out
    assert "missing scales: 1" in out


def test_config_is_checked_by_the_strict_schema(converted, tmp_path, capsys):
    bad = copy_ckpt(converted, tmp_path / "bad")
    cfg = json.loads((bad / "config.json").read_text())
    cfg["quantization_config"]["config_groups"]["experts_w4a16"]["weights"]["group_size"] = 64
    (bad / "config.json").write_text(json.dumps(cfg))
    assert cli("audit", bad) == 1
    assert "key 'config_groups.experts_w4a16.weights.group_size': is 64" in capsys.readouterr().out


def test_preserved_tensor_changed_is_a_fidelity_problem(native, converted, tmp_path, capsys):
    bad = copy_ckpt(converted, tmp_path / "bad")
    name = "norm.weight"
    mutate_shard(shard_of(bad, name), lambda t: t.__setitem__(name, t[name] + 1))
    assert cli("audit", bad, "--against", native, "--sample", "0") == 1
    assert "norm.weight: preserved tensor differs from the source" in capsys.readouterr().out


def test_against_requires_a_converted_path(native, capsys):
    assert cli("audit", native, "--against", native) == 1
    assert "--against needs a dsv4_int checkpoint" in capsys.readouterr().out


def test_verify_rehashes_shards_against_the_manifest(converted, tmp_path, capsys):
    assert cli("audit", converted, "--verify") == 0
    assert "verified: 3/3 shard(s)" in capsys.readouterr().out
    bad = copy_ckpt(converted, tmp_path / "bad")
    shard = sorted(bad.glob("*.safetensors"))[2]
    with open(shard, "r+b") as f:
        f.seek(shard.stat().st_size - 3)
        b = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([b[0] ^ 1]))
    assert cli("audit", bad, "--verify") == 1
    assert f"{shard.name} does not match its recorded SHA-256" in capsys.readouterr().out


def test_convert_audit_and_quickstart_never_import_sglang():
    import subprocess
    import sys

    code = ("import sys, sglang_ampere.convert.engine, sglang_ampere.convert.audit, sglang_ampere.commands.convert, "
            "sglang_ampere.convert.native_kernel, sglang_ampere.commands.quickstart; "
            "bad = sorted(m for m in sys.modules if m == 'sglang' or m.startswith('sglang.')); print(bad); "
            "sys.exit(1 if bad else 0)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr


def _native_with_unknown_tensors(root, count):
    """A native-looking checkpoint whose one shard holds ``count`` tensors the model does not have."""
    root.mkdir()
    (root / "config.json").write_text(json.dumps({"quantization_config": {"quant_method": "fp8"}}))
    header = build_header([OutTensor(f"not_a_tensor.{i}.weight", "BF16", (1,)) for i in range(count)])
    (root / "model-00001-of-00001.safetensors").write_bytes(header + bytes(2 * count))
    return root


def test_audit_json_lists_every_problem_of_a_native_checkpoint(tmp_path, capsys):
    import pickle

    from sglang_ampere.convert.jobs import SHOWN_PROBLEMS, make_plan
    from sglang_ampere.convert.options import Options
    from sglang_ampere.safetensors_io import CheckpointError

    root = _native_with_unknown_tensors(tmp_path / "many", 30)
    assert cli("audit", root, "--json") == 1
    rep = json.loads(capsys.readouterr().out)
    assert len(rep["problems"]) == 30 and not rep["ok"]
    assert sorted(rep["problems"]) == sorted(f"model-00001-of-00001.safetensors: not_a_tensor.{i}.weight: unknown "
                                             "tensor name (not part of DeepSeek-V4-Flash)" for i in range(30))
    # The exception carries all of them as data; only its message is cut, and says by how many.
    with pytest.raises(CheckpointError) as info:
        make_plan(root, Options())
    assert len(info.value.problems) == 30 and SHOWN_PROBLEMS < 30
    assert f"... and {30 - SHOWN_PROBLEMS} more" in str(info.value)
    assert pickle.loads(pickle.dumps(info.value)).problems == info.value.problems
