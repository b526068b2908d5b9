"""synth writes exactly the DeepSeek-V4-Flash inventory, deterministically, with sane values."""

import hashlib
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import torch
from safetensors import safe_open

from sglang_ampere import formats as F
from sglang_ampere.inventory import DENSE, EXPERT, PRESERVED, classify, native_inventory
from sglang_ampere.safetensors_io import DTYPE_SIZES
from sglang_ampere.synth import REAL, SynthSpec, make_config, write_checkpoint


def read_headers(ckpt: Path) -> dict[str, tuple[tuple[int, ...], str, str]]:
    index = json.loads((ckpt / "model.safetensors.index.json").read_text())
    out = {}
    for shard in sorted(set(index["weight_map"].values())):
        with safe_open(str(ckpt / shard), "pt") as f:
            for name in f.keys():
                sl = f.get_slice(name)
                out[name] = (tuple(sl.get_shape()), sl.get_dtype(), shard)
    return out


def expected_names(cfg: dict) -> set[str]:
    """Written from the reference table (dsv4-flash-format.md 3.3), independently of inventory.py."""
    names = {"embed.weight", "norm.weight", "head.weight", "hc_head_fn", "hc_head_base", "hc_head_scale"}

    def pair(b):
        return {b + ".weight", b + ".scale"}

    def block(p, i, ratio):
        s = {f"{p}.attn_norm.weight", f"{p}.ffn_norm.weight", f"{p}.attn.q_norm.weight",
             f"{p}.attn.kv_norm.weight", f"{p}.attn.attn_sink", f"{p}.ffn.gate.weight"}
        s |= {f"{p}.hc_{a}_{b}" for a in ("attn", "ffn") for b in ("fn", "base", "scale")}
        for w in ("wq_a", "wq_b", "wkv", "wo_a", "wo_b"):
            s |= pair(f"{p}.attn.{w}")
        for w in ("w1", "w2", "w3"):
            s |= pair(f"{p}.ffn.shared_experts.{w}")
            for e in range(cfg["n_routed_experts"]):
                s |= pair(f"{p}.ffn.experts.{e}.{w}")
        s.add(f"{p}.ffn.gate.tid2eid" if i < cfg["num_hash_layers"] else f"{p}.ffn.gate.bias")

        def comp(c):
            return {f"{c}.wkv.weight", f"{c}.wgate.weight", f"{c}.ape", f"{c}.norm.weight"}

        if ratio in (4, 128):
            s |= comp(f"{p}.attn.compressor")
        if ratio == 4:
            s |= pair(f"{p}.attn.indexer.wq_b") | {f"{p}.attn.indexer.weights_proj.weight"}
            s |= comp(f"{p}.attn.indexer.compressor")
        return s

    L = cfg["num_hidden_layers"]
    for i in range(L):
        names |= block(f"layers.{i}", i, cfg["compress_ratios"][i])
    for m in range(cfg["num_nextn_predict_layers"]):
        p = f"mtp.{m}"
        names |= block(p, L + m, cfg["compress_ratios"][L + m])
        names |= pair(f"{p}.e_proj") | pair(f"{p}.h_proj")
        names |= {
            f"{p}.{n}"
            for n in ("enorm.weight", "hnorm.weight", "norm.weight", "hc_head_fn", "hc_head_base", "hc_head_scale")
        }
    return names


def test_real_inventory_matches_published_audit():
    inv = native_inventory(make_config(REAL))
    assert len(inv) == 69_187
    c = Counter(s.role for s in inv.values())
    assert c[EXPERT] == 2 * 33_792 and c[DENSE] == 2 * (352 + 21 + 2) and c[PRESERVED] == 853
    assert set(inv) == expected_names(make_config(REAL))
    want = {  # shapes and dtypes from the reference table
        "layers.2.attn.wq_a.weight": ((1024, 4096), "F8_E4M3"),
        "layers.2.attn.wq_a.scale": ((8, 32), "F8_E8M0"),
        "layers.2.attn.wq_b.weight": ((32768, 1024), "F8_E4M3"),
        "layers.2.attn.wq_b.scale": ((256, 8), "F8_E8M0"),
        "layers.2.attn.wkv.scale": ((4, 32), "F8_E8M0"),
        "layers.2.attn.wo_a.weight": ((8192, 4096), "F8_E4M3"),
        "layers.2.attn.wo_b.scale": ((32, 64), "F8_E8M0"),
        "layers.2.hc_attn_fn": ((24, 16384), "F32"),
        "layers.2.attn.compressor.wkv.weight": ((1024, 4096), "BF16"),
        "layers.3.attn.compressor.wkv.weight": ((512, 4096), "BF16"),
        "layers.2.attn.compressor.ape": ((4, 1024), "F32"),
        "layers.3.attn.compressor.ape": ((128, 512), "F32"),
        "layers.2.attn.indexer.wq_b.scale": ((64, 8), "F8_E8M0"),
        "layers.2.attn.indexer.compressor.wkv.weight": ((256, 4096), "BF16"),
        "layers.2.attn.indexer.compressor.ape": ((4, 256), "F32"),
        "layers.2.attn.indexer.compressor.norm.weight": ((128,), "BF16"),
        "layers.0.ffn.gate.tid2eid": ((129280, 6), "I64"),
        "layers.5.ffn.gate.bias": ((256,), "F32"),
        "layers.9.ffn.experts.255.w1.weight": ((2048, 2048), "I8"),
        "layers.9.ffn.experts.0.w3.scale": ((2048, 128), "F8_E8M0"),
        "layers.9.ffn.experts.7.w2.weight": ((4096, 1024), "I8"),
        "layers.9.ffn.experts.7.w2.scale": ((4096, 64), "F8_E8M0"),
        "layers.9.ffn.shared_experts.w1.scale": ((16, 32), "F8_E8M0"),
        "layers.9.ffn.shared_experts.w2.scale": ((32, 16), "F8_E8M0"),
        "mtp.0.e_proj.weight": ((4096, 4096), "F8_E4M3"),
        "hc_head_fn": ((4, 16384), "F32"),
        "mtp.0.hc_head_scale": ((1,), "F32"),
    }
    for name, (shape, dtype) in want.items():
        assert (inv[name].shape, inv[name].dtype) == (shape, dtype), name


def test_checkpoint_inventory_both_ways(synth_ckpt):
    cfg = json.loads((synth_ckpt / "config.json").read_text())
    headers = read_headers(synth_ckpt)
    expected = expected_names(cfg)
    assert not (expected - set(headers)), f"missing: {sorted(expected - set(headers))[:10]}"
    assert not (set(headers) - expected), f"extra: {sorted(set(headers) - expected)[:10]}"
    inv = native_inventory(cfg)
    for name, (shape, dtype, _) in headers.items():
        assert (shape, dtype) == (inv[name].shape, inv[name].dtype), name
        assert classify(name).role == inv[name].role
    # pairs share a shard; the index maps every tensor to the shard that holds it
    index = json.loads((synth_ckpt / "model.safetensors.index.json").read_text())
    assert {n: s for n, (_, _, s) in headers.items()} == index["weight_map"]
    for name, (_, _, shard) in headers.items():
        if name.endswith(".scale"):
            assert headers[name[:-5] + "weight"][2] == shard
    sizes = {n: torch.Size(s).numel() * DTYPE_SIZES[d] for n, (s, d, _) in headers.items()}
    assert index["metadata"]["total_size"] == sum(sizes.values())
    assert len(set(index["weight_map"].values())) >= 3


def test_config_keys(synth_ckpt):
    cfg = json.loads((synth_ckpt / "config.json").read_text())
    assert cfg["architectures"] == ["DeepseekV4ForCausalLM"] and cfg["model_type"] == "deepseek_v4"
    assert cfg["quantization_config"] == {"activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8",
                                          "scale_fmt": "ue8m0", "weight_block_size": [128, 128]}
    assert {0, 4, 128} <= set(cfg["compress_ratios"]) and len(cfg["compress_ratios"]) == cfg["num_hidden_layers"] + 1
    assert cfg["num_nextn_predict_layers"] == 1 and 0 < cfg["num_hash_layers"] < cfg["num_hidden_layers"]
    assert set(make_config(REAL)) == set(cfg)
    gen = json.loads((synth_ckpt / "generation_config.json").read_text())
    assert gen["eos_token_id"] == cfg["eos_token_id"] and gen["bos_token_id"] == cfg["bos_token_id"]


def test_values_look_like_weights(synth_ckpt):
    index = json.loads((synth_ckpt / "model.safetensors.index.json").read_text())
    fp8_exps, fp4_exps = set(), set()
    for shard in sorted(set(index["weight_map"].values())):
        with safe_open(str(synth_ckpt / shard), "pt") as f:
            for name in f.keys():
                t = f.get_tensor(name)
                raw = t.view(torch.uint8) if t.element_size() == 1 else t
                assert bool((raw != 0).any()), f"{name} is all zeros"
                if t.dtype == F.E8M0_DTYPE:
                    assert not bool((t.view(torch.uint8) == 255).any())
                    (fp4_exps if ".experts." in name else fp8_exps).update(t.view(torch.uint8).unique().tolist())
                elif t.dtype.is_floating_point and t.element_size() > 1:
                    assert bool(torch.isfinite(t).all()), name
                if name.endswith("tid2eid"):
                    cfg = json.loads((synth_ckpt / "config.json").read_text())
                    assert int(t.min()) >= 0 and int(t.max()) < cfg["n_routed_experts"]
                    assert all(len(set(r)) == len(r) for r in t[:50].tolist())
    assert len(fp4_exps) >= 6 and len(fp8_exps) >= 4, (fp4_exps, fp8_exps)


def _digest(ckpt: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(ckpt.glob("*.safetensors")):
        h.update(p.read_bytes())
    return h.hexdigest()


def test_deterministic_per_seed(tmp_path, synth_ckpt):
    spec = SynthSpec()
    again = write_checkpoint(tmp_path / "a", spec, seed=1234, progress=False)
    assert _digest(again) == _digest(synth_ckpt)
    other = write_checkpoint(tmp_path / "b", spec, seed=99, progress=False)
    assert _digest(other) != _digest(synth_ckpt)
    # the bytes of a tensor do not depend on how the checkpoint is sharded
    two = write_checkpoint(tmp_path / "c", spec, seed=1234, shards=2, progress=False)
    with safe_open(str(next(two.glob("*-00002.safetensors"))), "pt") as f:
        name = next(iter(f.keys()))
        t2 = f.get_tensor(name)
    shard = json.loads((synth_ckpt / "model.safetensors.index.json").read_text())["weight_map"][name]
    with safe_open(str(synth_ckpt / shard), "pt") as f:
        assert torch.equal(f.get_tensor(name).view(torch.uint8) if t2.element_size() == 1 else f.get_tensor(name),
                           t2.view(torch.uint8) if t2.element_size() == 1 else t2)


def test_tokenizer_loads_and_round_trips(synth_ckpt):
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast.from_pretrained(str(synth_ckpt))
    cfg = json.loads((synth_ckpt / "config.json").read_text())
    text = "Ampere has no FP8 tensor cores — ünïcode ok?"
    ids = tok.encode(text, add_special_tokens=False)
    assert tok.decode(ids) == text
    assert (
        max(ids) < cfg["vocab_size"]
        and tok.bos_token_id == cfg["bos_token_id"]
        and tok.eos_token_id == cfg["eos_token_id"]
    )
    chat = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert chat.startswith(tok.bos_token) and "hi" in chat


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "sglang_ampere", *args], capture_output=True, text=True)


def test_cli_errors_leave_nothing_behind(tmp_path):
    r = run_cli("synth", str(tmp_path / "x"), "--hidden", "200", "--quiet")
    assert r.returncode == 2 and "--hidden must be a positive multiple of 128" in r.stderr
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    r = run_cli("synth", str(tmp_path / "full"), "--quiet")
    assert r.returncode == 2 and "--overwrite" in r.stderr
    assert (tmp_path / "full" / "keep.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["full"]


def test_cli_sizes_and_version(tmp_path):
    r = run_cli(
        "synth", str(tmp_path / "s"), "--layers", "5", "--experts", "4", "--hidden", "384", "--quiet", "--seed", "3"
    )
    assert r.returncode == 0, r.stderr
    cfg = json.loads((tmp_path / "s" / "config.json").read_text())
    assert (cfg["num_hidden_layers"], cfg["n_routed_experts"], cfg["hidden_size"]) == (5, 4, 384)
    assert cfg["compress_ratios"] == [0, 0, 4, 128, 4, 0]
    assert set(read_headers(tmp_path / "s")) == expected_names(cfg)
    v = run_cli("--version")
    assert v.returncode == 0 and v.stdout.startswith("sglang-ampere ")
