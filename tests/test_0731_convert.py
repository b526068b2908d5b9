"""synth --variant 0731 -> convert -> audit: nothing refused, the drafter converted by the main rules.

The rule (docs/dsv4-flash-0731.md): every drafter tensor gets the role its name has in the main
layers -- routed experts INT4 W4A16, FP8 linears with a 128x128 scale (attention, shared expert,
``main_proj``) INT8 -- and everything else (norms, hc_*, gate, Markov head) is copied byte for byte.
"""

from __future__ import annotations

import json

import pytest
import torch
from helpers.convert import fresh_seed
from safetensors import safe_open

from sglang_ampere.cli import main as cli
from sglang_ampere.convert.audit import audit
from sglang_ampere.formats.blocks import block_scale_shape
from sglang_ampere.inventory import DENSE, EXPERT, PRESERVED, native_inventory
from sglang_ampere.synth import SynthSpec, write_checkpoint

SPEC = dict(layers=3, experts=5, topk=2, hidden=256, moe_inter=384, heads=4, q_lora_rank=256, o_groups=2,
            o_lora_rank=128, index_heads=4, vocab=300, hash_layers=1, variant="0731", dspark_stages=3,
            dspark_experts=3, dspark_markov_rank=24)


@pytest.fixture(scope="module")
def native_0731(tmp_path_factory):
    return write_checkpoint(tmp_path_factory.mktemp("n0731") / "native", SynthSpec(**SPEC), seed=fresh_seed(),
                            shards=3, progress=False)


def _tensors(path):
    out = {}
    for shard in sorted(path.glob("*.safetensors")):
        with safe_open(str(shard), "pt") as f:
            out.update({n: f.get_tensor(n) for n in f.keys()})
    return out


@pytest.mark.parametrize("strategy", ["block", "channel"])
def test_0731_converts_and_audits_clean(native_0731, tmp_path, strategy):
    report, problems = audit(native_0731)
    assert problems == [], problems                     # the native 0731 layout is not refused

    out = tmp_path / "int"
    assert cli(["convert", str(native_0731), str(out), "--dense-int8", strategy, "--quiet"]) == 0
    report, problems = audit(out, against=native_0731)
    assert problems == [], problems

    src_cfg = json.loads((native_0731 / "config.json").read_text())
    cfg = json.loads((out / "config.json").read_text())
    dspark = {k: v for k, v in src_cfg.items() if k.startswith("dspark_")}
    assert len(dspark) >= 4 and all(cfg[k] == v for k, v in dspark.items())
    changed = {k for k in set(cfg) | set(src_cfg) if cfg.get(k) != src_cfg.get(k)}
    assert changed == {"quantization_config", "expert_dtype", "dsv4_int_conversion"}
    targets = cfg["quantization_config"]["config_groups"]["linears_w8a16"]["targets"]
    assert "mtp.*.main_proj" in targets

    src, got = _tensors(native_0731), _tensors(out)
    assert set(got) == set(src)
    inv = native_inventory(src_cfg)
    int8 = {"block": torch.int8, "channel": torch.uint8}[strategy]
    for name, spec in inv.items():
        if not name.startswith("mtp."):
            continue
        t = got[name]
        if spec.role == PRESERVED:
            assert t.dtype == src[name].dtype and torch.equal(t.view(torch.uint8), src[name].view(torch.uint8)), name
        elif spec.role == EXPERT and name.endswith(".weight"):
            n, half_k = src[name].shape
            assert t.dtype == torch.int8 and tuple(t.shape) == (n, half_k), name
            scale = got[name[: -len("weight")] + "scale"]
            assert scale.dtype == torch.bfloat16 and tuple(scale.shape) == (n, 2 * half_k // 32), name
        elif spec.role == DENSE and name.endswith(".weight"):
            n, k = src[name].shape
            assert t.dtype == int8 and tuple(t.shape) == (n, k), name
            scale = got[name[: -len("weight")] + "scale"]
            want = block_scale_shape(n, k) if strategy == "block" else (n,)
            assert scale.dtype == torch.bfloat16 and tuple(scale.shape) == tuple(want), name
    assert got["mtp.0.main_proj.weight"].dtype == int8
    assert got["mtp.2.ffn.experts.2.w2.weight"].dtype == torch.int8 and "mtp.2.ffn.experts.3.w2.weight" not in got


def test_a_0731_tensor_in_a_v4_flash_checkpoint_is_refused(native_0731, tmp_path):
    """The name rule accepts DSpark names anywhere under mtp.*; the inventory, which follows the
    config, is what catches a drafter tensor in a checkpoint whose config has no dspark keys
    (the audit of the converted checkpoint compares against it both ways)."""
    import shutil

    bad = tmp_path / "mixed"
    shutil.copytree(native_0731, bad)
    cfg = json.loads((bad / "config.json").read_text())
    for k in [k for k in cfg if k.startswith("dspark_")]:
        del cfg[k]
    cfg["num_nextn_predict_layers"] = 1
    (bad / "config.json").write_text(json.dumps(cfg))
    out = tmp_path / "int"
    assert cli(["convert", str(bad), str(out), "--quiet"]) == 0
    report, problems = audit(out)
    assert any(p.startswith("mtp.0.main_proj.weight: present but not part") for p in problems), problems
    assert any(p.startswith("mtp.0.e_proj.weight: missing") for p in problems), problems
    assert any(p.startswith("mtp.2.markov_head.head.weight: present but not part") for p in problems), problems
