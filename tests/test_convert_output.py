"""What ``convert`` writes: the published dsv4_int names/dtypes/shapes and config schema, the
index with the true total_size, exact bytes per the rules, copied files, SNR sanity."""

import json
import math

import torch
from helpers.convert import cli, files_of
from helpers.dsv4int import published_quant_config
from safetensors.torch import load_file

from sglang_ampere import QUANT_METHOD
from sglang_ampere.convert.config import PROVENANCE_KEY
from sglang_ampere.convert.dense import int8_block, uint8_channel
from sglang_ampere.convert.engine import convert
from sglang_ampere.convert.experts import requantize
from sglang_ampere.convert.options import Options
from sglang_ampere.formats import (
    fp8_block_dequantize,
    int4_group_dequantize,
    int8_block_dequantize,
    mxfp4_dequantize,
    uint8_channel_dequantize,
)
from sglang_ampere.inventory import DENSE, EXPERT, classify, native_inventory
from sglang_ampere.safetensors_io import read_header

# The published schema, written from the format reference independently of convert/config.py.
published = published_quant_config


def _all(ckpt):
    out = {}
    for p in sorted(ckpt.glob("*.safetensors")):
        out.update(load_file(str(p)))
    return out


def test_config_is_the_published_schema_plus_allowed_keys(native, converted):
    src_cfg = json.loads((native / "config.json").read_text())
    cfg = json.loads((converted / "config.json").read_text())
    qc = dict(cfg["quantization_config"])
    assert qc.pop("routed_experts_quant_method") not in (None, "mxfp4")
    assert qc == published("block", "mse")
    assert qc["quant_method"] == QUANT_METHOD
    assert cfg["expert_dtype"] == "int4"
    prov = cfg[PROVENANCE_KEY]
    assert prov["converter"] == "sglang-ampere convert" and prov["options"]["expert_mode"] == "mse"
    assert len(prov["source_index_sha256"]) == 64
    rest = {k: v for k, v in cfg.items() if k not in ("quantization_config", "expert_dtype", PROVENANCE_KEY)}
    assert rest == {k: v for k, v in src_cfg.items() if k not in ("quantization_config", "expert_dtype")}


def test_index_and_tensor_inventory(native, converted):
    index = json.loads((converted / "model.safetensors.index.json").read_text())
    actual, total = {}, 0
    for p in sorted(converted.glob("*.safetensors")):
        for n, info in read_header(p).tensors.items():
            actual[n] = p.name
            total += info.nbytes
    assert index["weight_map"] == actual
    assert index["metadata"]["total_size"] == total
    assert sorted(p.name for p in converted.glob("*.safetensors")) == sorted(
        p.name for p in native.glob("*.safetensors"))
    inv = native_inventory(json.loads((native / "config.json").read_text()))
    headers = {n: i for p in converted.glob("*.safetensors") for n, i in read_header(p).tensors.items()}
    assert set(headers) == set(inv)
    for n, spec in inv.items():
        h = headers[n]
        if spec.role == EXPERT:
            want = "I8" if n.endswith(".weight") else "BF16"
        elif spec.role == DENSE:
            want = "I8" if n.endswith(".weight") else "BF16"
        else:
            want = spec.dtype
        assert (h.dtype, h.shape) == (want, spec.shape), n


def test_bytes_follow_the_rules_and_preserved_are_identical(native, converted):
    src, out = _all(native), _all(converted)
    for n, t in src.items():
        r = classify(n)
        if r.role == EXPERT and r.part == "weight":
            q, s = requantize(t.view(torch.uint8), src[r.base + ".scale"], "mse")
            assert torch.equal(out[n].view(torch.uint8), q) and torch.equal(
                out[r.base + ".scale"].view(torch.int16), s.view(torch.int16)
            )
        elif r.role == DENSE and r.part == "weight":
            q, s = int8_block(fp8_block_dequantize(t, src[r.base + ".scale"]))
            assert torch.equal(out[n], q) and torch.equal(out[r.base + ".scale"].view(torch.int16), s.view(torch.int16))
        elif r.role not in (EXPERT, DENSE):
            assert out[n].dtype == t.dtype and torch.equal(out[n].view(torch.uint8), t.view(torch.uint8)), n


def test_dequantized_output_tracks_the_native_values(native, converted):
    src, out = _all(native), _all(converted)
    snr = {"expert": [], "dense": []}
    for n, t in src.items():
        r = classify(n)
        if r.part != "weight":
            continue
        if r.role == EXPERT:
            ref = mxfp4_dequantize(t, src[r.base + ".scale"])
            got = int4_group_dequantize(out[n], out[r.base + ".scale"])
        else:
            ref = fp8_block_dequantize(t, src[r.base + ".scale"])
            got = int8_block_dequantize(out[n], out[r.base + ".scale"])
        noise = float(((ref.double() - got.double()) ** 2).sum())
        snr[r.role].append(10 * math.log10(float((ref.double() ** 2).sum()) / noise))
    assert 17 < min(snr["expert"]) and sum(snr["expert"]) / len(snr["expert"]) > 22.5
    assert min(snr["dense"]) > 15 and sum(snr["dense"]) / len(snr["dense"]) > 22


def test_non_weight_files_are_copied(native, converted):
    for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json", "synth.json"):
        assert (converted / name).read_bytes() == (native / name).read_bytes()


def test_channel_and_keep_bf16(native, tmp_path):
    dst = tmp_path / "ch"
    assert cli("convert", native, dst, "--quiet", "--dense-int8", "channel", "--expert-scale", "absmax",
               "--keep-bf16", "*.attn.wo_a", "--keep-bf16", "mtp.*.e_proj") == 0
    cfg = json.loads((dst / "config.json").read_text())
    qc = dict(cfg["quantization_config"])
    qc.pop("routed_experts_quant_method")
    assert qc == published("channel", "absmax7", ["*.attn.wo_a", "mtp.*.e_proj"])
    src, out = _all(native), _all(dst)
    wm = json.loads((dst / "model.safetensors.index.json").read_text())["weight_map"]
    assert "layers.0.attn.wo_a.scale" not in wm and "mtp.0.e_proj.scale" not in wm and "mtp.0.h_proj.scale" in wm
    ref = fp8_block_dequantize(src["layers.1.attn.wo_a.weight"], src["layers.1.attn.wo_a.scale"])
    assert out["layers.1.attn.wo_a.weight"].dtype == torch.bfloat16
    assert torch.equal(out["layers.1.attn.wo_a.weight"].float(), ref)          # e4m3 * 2^k is exact in BF16
    w = "layers.2.ffn.shared_experts.w2.weight"
    x = fp8_block_dequantize(src[w], src[w.replace("weight", "scale")])
    q, s = uint8_channel(x)
    assert out[w].dtype == torch.uint8 and torch.equal(out[w], q)
    assert torch.equal(out[w.replace("weight", "scale")].view(torch.int16), s.view(torch.int16))
    got = uint8_channel_dequantize(out[w], out[w.replace("weight", "scale")])
    assert float(((x - got) ** 2).sum() / (x ** 2).sum()) < 10 ** -3
    assert cli("audit", dst) == 0


def test_two_workers_write_the_same_bytes(native, converted, tmp_path):
    dst = tmp_path / "w2"
    s = convert(native, dst, Options(), workers=2, progress=False)
    assert len(s.converted) == 3
    assert files_of(dst) == files_of(converted)    # shards, index, config and manifest alike


def test_torch_expert_kernel_writes_the_same_bytes(native, converted, tmp_path):
    dst = tmp_path / "torch"
    assert cli("convert", native, dst, "--quiet", "--expert-kernel", "torch") == 0
    assert files_of(dst) == files_of(converted)


def test_plan_sizes_equal_written_sizes(native, converted):
    from sglang_ampere.convert.jobs import make_plan

    plan = make_plan(native, Options())
    for sp in plan.shards:
        assert sp.out_bytes == (converted / sp.name).stat().st_size
