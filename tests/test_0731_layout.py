"""The DeepSeek-V4-Flash-0731 layout: inventory rules, synth --variant 0731, eval on 0731.

What the names must be is checked against SGLang's own DSpark loader in test_0731_load.py;
here: how the drafter's tensors scale with the config, that the default layout is untouched,
that synth writes exactly the inventory, and what ``eval`` does with a 0731 checkpoint.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from safetensors import safe_open

from sglang_ampere.cli import main as cli
from sglang_ampere.inventory import (
    DENSE,
    EXPERT,
    PRESERVED,
    classify,
    has_dspark_drafter,
    native_inventory,
)
from sglang_ampere.synth import REAL, SynthSpec, make_config, write_checkpoint


def _drafter(inv) -> dict:
    return {n: s for n, s in inv.items() if n.startswith("mtp.")}


def test_drafter_scales_with_the_config():
    spec = SynthSpec(layers=3, experts=6, topk=2, hash_layers=3, variant="0731", dspark_stages=2,
                     dspark_experts=3, dspark_markov_rank=32)
    cfg = make_config(spec)
    assert has_dspark_drafter(cfg) and len(cfg["dspark_target_layer_ids"]) == 2
    assert cfg["num_nextn_predict_layers"] == 2 and len(cfg["compress_ratios"]) == 3 + 2
    inv = native_inventory(cfg)
    H, V = cfg["hidden_size"], cfg["vocab_size"]
    d = _drafter(inv)
    assert {n.split(".")[1] for n in d} == {"0", "1"}
    # per-block expert count from dspark_n_routed_experts, not the main model's 6
    assert "mtp.1.ffn.experts.2.w3.weight" in d and "mtp.1.ffn.experts.3.w1.weight" not in d
    assert "layers.2.ffn.experts.5.w1.weight" in inv
    assert d["mtp.0.ffn.gate.weight"].shape == (3, H) and d["mtp.1.ffn.gate.bias"].shape == (3,)
    # never hash-routed, never compressed (hash_layers = layers here, so a main-layer rule would say tid2eid)
    assert not any("tid2eid" in n or "compressor" in n or "indexer" in n for n in d)
    # main_proj reads one hidden state per target layer; only block 0 has it
    assert (d["mtp.0.main_proj.weight"].shape, d["mtp.0.main_proj.weight"].dtype) == ((H, 2 * H), "F8_E4M3")
    assert d["mtp.0.main_proj.scale"].shape == (H // 128, 2 * H // 128)
    assert "mtp.1.main_proj.weight" not in d and "mtp.1.main_norm.weight" not in d
    # the head pieces live on the last block, the Markov head is [vocab, rank]
    assert "mtp.1.norm.weight" in d and "mtp.1.hc_head_fn" in d and "mtp.0.norm.weight" not in d
    assert (d["mtp.1.markov_head.embed.weight"].shape, d["mtp.1.markov_head.embed.weight"].dtype) == ((V, 32), "BF16")
    assert (d["mtp.1.markov_head.head.weight"].shape, d["mtp.1.markov_head.head.weight"].dtype) == ((V, 32), "F32")
    assert not any(("e_proj" in n or "h_proj" in n or "enorm" in n or "confidence" in n) for n in d)
    # the optional confidence head appears only when the config enables it
    with_conf = _drafter(native_inventory({**cfg, "enable_confidence_head": True}))
    assert with_conf["mtp.1.confidence_head.proj.weight"].shape == (1, H + 32)
    # the main model is the same as V4-Flash's
    plain = native_inventory(make_config(SynthSpec(layers=3, experts=6, topk=2, hash_layers=3)))
    assert {n: s for n, s in inv.items() if not n.startswith("mtp.")} == \
        {n: s for n, s in plain.items() if not n.startswith("mtp.")}


def test_every_drafter_tensor_has_the_role_its_rule_gives():
    inv = native_inventory({**make_config(SynthSpec(variant="0731")), "enable_confidence_head": True})
    roles = {n: (s.role, classify(n)) for n, s in _drafter(inv).items()}
    assert all(r is not None and r.role == role for role, r in roles.values()), \
        [n for n, (role, r) in roles.items() if r is None or r.role != role]
    by_role = {role: {re.sub(r"mtp\.\d+\.|experts\.\d+\.", "", n) for n, (r, _) in roles.items() if r == role}
               for role in (EXPERT, DENSE, PRESERVED)}
    assert by_role[EXPERT] == {f"ffn.w{i}.{p}" for i in (1, 2, 3) for p in ("weight", "scale")}
    assert "main_proj.weight" in by_role[DENSE] and "attn.wo_a.scale" in by_role[DENSE]
    assert {"markov_head.embed.weight", "markov_head.head.weight", "main_norm.weight",
            "confidence_head.proj.weight"} <= by_role[PRESERVED]


def test_default_variant_is_the_v4_flash_layout():
    cfg = make_config(SynthSpec())
    assert not has_dspark_drafter(cfg) and not any(k.startswith("dspark_") for k in cfg)
    d = _drafter(native_inventory(cfg))
    assert "mtp.0.e_proj.weight" in d and not any("main_proj" in n or "markov" in n for n in d)
    assert not has_dspark_drafter({**cfg, "dspark_markov_rank": None})
    assert has_dspark_drafter({**cfg, "dspark_markov_rank": 8})


def test_release_sizes_of_the_drafter():
    cfg = make_config(SynthSpec(**{**REAL.__dict__, "variant": "0731"}))
    inv = native_inventory(cfg)
    d = _drafter(inv)
    assert cfg["dspark_target_layer_ids"] == sorted(set(cfg["dspark_target_layer_ids"]))
    assert max(cfg["dspark_target_layer_ids"]) == 42 and len(cfg["dspark_target_layer_ids"]) == 3
    assert d["mtp.0.main_proj.weight"].shape == (4096, 3 * 4096)
    assert d["mtp.2.markov_head.head.weight"].shape == (129280, cfg["dspark_markov_rank"])
    assert d["mtp.2.attn.wq_b.weight"].shape == (64 * 512, 1024)
    experts = sum(1 for n in d if ".ffn.experts." in n)
    assert experts == 3 * 256 * 3 * 2            # blocks x experts x (w1, w2, w3) x (weight, scale)


def test_synth_cli_writes_the_0731_inventory(tmp_path, seed):
    out = tmp_path / "ckpt"
    assert cli(["synth", str(out), "--variant", "0731", "--seed", str(seed), "--quiet", "--layers", "3",
                "--dspark-stages", "2", "--dspark-experts", "5", "--dspark-markov-rank", "16"]) == 0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["dspark_n_routed_experts"] == 5 and cfg["dspark_markov_rank"] == 16
    assert cfg["dspark_block_size"] >= 1 and 0 <= cfg["dspark_noise_token_id"] < cfg["vocab_size"]
    got = {}
    for shard in sorted(out.glob("*.safetensors")):
        with safe_open(str(shard), "pt") as f:
            for n in f.keys():
                sl = f.get_slice(n)
                got[n] = (tuple(sl.get_shape()), sl.get_dtype())
    want = {n: (s.shape, s.dtype) for n, s in native_inventory(cfg).items()}
    assert got == want
    assert json.loads((out / "synth.json").read_text())["spec"]["variant"] == "0731"


def test_synth_refuses_bad_drafter_sizes(tmp_path):
    with pytest.raises(ValueError, match="--dspark-experts"):
        write_checkpoint(tmp_path / "x", SynthSpec(variant="0731", dspark_experts=1, topk=2), progress=False)
    with pytest.raises(ValueError, match="--dspark-stages"):
        write_checkpoint(tmp_path / "y", SynthSpec(variant="0731", layers=2, hash_layers=1, dspark_stages=3),
                         progress=False)
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


_SMALL = dict(layers=2, experts=4, topk=2, hidden=128, moe_inter=128, heads=2, q_lora_rank=128, o_groups=1,
              o_lora_rank=128, index_heads=2, vocab=300, hash_layers=1, dspark_stages=2, dspark_experts=2,
              dspark_markov_rank=8)


@pytest.fixture(scope="module")
def small_0731(tmp_path_factory) -> Path:
    return write_checkpoint(tmp_path_factory.mktemp("s0731") / "native", SynthSpec(**_SMALL, variant="0731"),
                            seed=11, progress=False)


def test_eval_runs_the_main_model_of_a_0731_checkpoint(small_0731, tmp_path):
    """synth seeds every tensor by its name, so the V4-Flash layout with the same sizes and seed
    has byte-identical main-model tensors: the 0731 logits must be exactly those."""
    import torch

    from sglang_ampere.reference.eval import evaluate

    plain = write_checkpoint(tmp_path / "plain", SynthSpec(**_SMALL), seed=11, progress=False)
    ids = list(range(3, 40, 3))
    r = evaluate(small_0731, ids, stream=False, dtype="float32")
    ref = evaluate(plain, ids, stream=False, dtype="float32")
    assert r["tokens"] == len(ids) and r["model"]["ppl"] == ref["model"]["ppl"]
    assert r["_logits"].shape == (len(ids), 300) and torch.equal(r["_logits"], ref["_logits"])


def test_eval_mtp_on_a_0731_checkpoint_says_the_drafter_is_not_modelled(small_0731):
    from sglang_ampere.reference.eval import evaluate
    from sglang_ampere.reference.weights import ReferenceError

    with pytest.raises(ReferenceError, match=r"DSpark drafter .* does not\s+model\. Drop --mtp"):
        evaluate(small_0731, list(range(3, 20)), mtp=True)
