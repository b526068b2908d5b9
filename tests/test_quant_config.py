"""Dsv4IntConfig: the published quantization_config schema, strictly; per-layer decisions
from the real tensor dtypes; SGLang's QuantizationConfig contract."""

from __future__ import annotations

import copy

import pytest
import torch
from helpers.dsv4int import published_quant_config

from sglang_ampere.schema import SchemaError, parse_quantization_config


@pytest.mark.parametrize("strategy", ["block", "channel"])
def test_published_schema_parses(strategy):
    s = parse_quantization_config({**published_quant_config(strategy), "packed_modules_mapping": {}, "hf_config": None})
    assert s.dense_strategy == strategy
    assert s.dense_block_size == ((128, 128) if strategy == "block" else None)
    assert s.expert_group_size == 32
    assert s.is_dense_target("layers.7.attn.wq_a") and s.is_dense_target("mtp.0.e_proj")
    assert s.is_dense_target("layers.2.attn.indexer.compressor.wkv")     # listed, though BF16 on disk
    assert not s.is_dense_target("layers.2.attn.compressor.wkv")
    assert s.is_expert_target("layers.0.ffn.experts.255.w2")


def _mutate(path, value=None, delete=False):
    cfg = published_quant_config("block")
    node = cfg
    for key in path[:-1]:
        node = node[key]
    if delete:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return cfg


@pytest.mark.parametrize("path,value,delete,key", [
    (("format",), None, True, "format"),
    (("ignore",), None, True, "ignore"),
    (("config_groups", "experts_w4a16", "weights", "group_size"), None, True,
     "config_groups.experts_w4a16.weights.group_size"),
    (("config_groups", "linears_w8a16", "weights", "block_size"), None, True,
     "config_groups.linears_w8a16.weights.block_size"),
    (("config_groups", "linears_w8a16", "targets"), None, True, "config_groups.linears_w8a16.targets"),
    (("weird_key",), 1, False, "weird_key"),
    (("config_groups", "experts_w4a16", "weights", "zero_point"), True, False,
     "config_groups.experts_w4a16.weights.zero_point"),
    (("config_groups", "other_group"), {}, False, "config_groups.other_group"),
    (("config_groups", "linears_w8a16", "weights", "strategy"), "tensor", False,
     "config_groups.linears_w8a16.weights.strategy"),
    (("config_groups", "experts_w4a16", "weights", "group_size"), 128, False,
     "config_groups.experts_w4a16.weights.group_size"),
    (("config_groups", "linears_w8a16", "input_activations", "num_bits"), 8, False,
     "config_groups.linears_w8a16.input_activations.num_bits"),
    (("quant_method",), "fp8", False, "quant_method"),
])
def test_schema_errors_name_the_key(path, value, delete, key):
    with pytest.raises(SchemaError) as e:
        parse_quantization_config(_mutate(path, value, delete))
    assert e.value.key == key
    assert f"'{key}'" in str(e.value)


def test_routed_experts_quant_method_key():
    ok = {**published_quant_config("block"), "routed_experts_quant_method": "int4"}
    assert parse_quantization_config(ok).dense_strategy == "block"
    with pytest.raises(SchemaError, match="routed_experts_quant_method"):
        parse_quantization_config({**published_quant_config("block"), "routed_experts_quant_method": "mxfp4"})


def test_channel_variant_rejects_block_size():
    cfg = published_quant_config("channel")
    cfg["config_groups"]["linears_w8a16"]["weights"]["block_size"] = [128, 128]
    with pytest.raises(SchemaError, match="block_size"):
        parse_quantization_config(cfg)


# --- Dsv4IntConfig decisions -------------------------------------------------------------------

sglang = pytest.importorskip("sglang")


def _tensors(strategy="block"):
    """A header index like a real checkpoint's (only the parts the decisions read)."""
    i8 = "I8" if strategy == "block" else "U8"

    def dense(base, n, k):
        sc = [(n + 127) // 128, (k + 127) // 128] if strategy == "block" else [n]
        return {f"{base}.weight": (i8, (n, k)), f"{base}.scale": ("BF16", tuple(sc))}

    t = {}
    t.update(dense("layers.2.attn.wq_a", 256, 256))
    t.update(dense("layers.2.attn.wkv", 512, 256))
    t.update(dense("layers.2.attn.wq_b", 4096, 256))
    t.update(dense("layers.2.ffn.shared_experts.w1", 256, 256))
    t.update(dense("layers.2.ffn.shared_experts.w3", 256, 256))
    t.update(dense("mtp.0.e_proj", 256, 256))
    t["layers.2.attn.indexer.compressor.wkv.weight"] = ("BF16", (256, 256))
    t["layers.2.attn.indexer.compressor.wgate.weight"] = ("BF16", (256, 256))
    t["layers.2.attn.indexer.weights_proj.weight"] = ("BF16", (8, 256))
    t["layers.2.ffn.experts.0.w1.weight"] = ("I8", (256, 128))
    t["layers.2.ffn.experts.0.w1.scale"] = ("BF16", (256, 8))
    return t


def _config(strategy="block", tensors=None):
    from sglang_ampere.quant.config import Dsv4IntConfig

    return Dsv4IntConfig(parse_quantization_config(published_quant_config(strategy)),
                         _tensors(strategy) if tensors is None else tensors)


@pytest.mark.parametrize("strategy", ["block", "channel"])
def test_decisions_follow_real_dtypes(strategy):
    from sglang.srt.layers.linear import LinearBase

    cfg = _config(strategy)
    assert cfg.get_name() == "dsv4_int" and cfg.get_min_capability() == 80
    assert cfg.get_supported_act_dtypes() == [torch.bfloat16]
    assert cfg.weight_block_size == ([128, 128] if strategy == "block" else None)
    assert cfg.can_fuse_shared_expert() is False
    dummy = LinearBase(1, 1)

    def kind(p):
        return type(cfg.get_quant_method(dummy, p)).__name__

    assert kind("model.layers.2.self_attn.wqkv_a") == "Dsv4Int8LinearMethod"           # fused, both INT8
    assert kind("model.layers.2.self_attn.wq_a") == "Dsv4Int8LinearMethod"
    assert kind("model.layers.2.self_attn.wq_b") == "Dsv4Int8LinearMethod"
    assert kind("model.layers.2.mlp.shared_experts.gate_up_proj") == "Dsv4Int8LinearMethod"
    assert kind("model.e_proj") == "Dsv4Int8LinearMethod"                              # MTP draft naming
    assert kind("model.decoder.self_attn.wq_b") == "UnquantizedLinearMethod"          # not in this index
    # Listed as targets but BF16 on disk -> BF16.
    assert kind("model.layers.2.self_attn.indexer.compressor.wkv_gate") == "UnquantizedLinearMethod"
    assert kind("model.layers.2.self_attn.indexer.weights_proj") == "UnquantizedLinearMethod"
    assert kind("lm_head") == "UnquantizedLinearMethod"
    assert cfg.get_quant_method(torch.nn.Module(), "model.layers.2.self_attn.attn_mqa") is None
    assert cfg.is_linear_unquantized("model.layers.2.self_attn.indexer.weights_proj")


def test_embeddings_and_attention_get_no_method():
    from sglang.srt.layers.vocab_parallel_embedding import VocabParallelEmbedding

    cfg = _config()
    emb = VocabParallelEmbedding.__new__(VocabParallelEmbedding)
    torch.nn.Module.__init__(emb)
    assert cfg.get_quant_method(emb, "model.embed_tokens") is None


def test_fused_pair_with_mixed_dtypes_names_the_preset_variable():
    from sglang.srt.layers.linear import LinearBase

    from sglang_ampere.quant.config import Dsv4IntError

    t = _tensors()
    t["layers.2.attn.wkv.weight"] = ("BF16", (512, 256))
    del t["layers.2.attn.wkv.scale"]
    cfg = _config(tensors=t)
    with pytest.raises(Dsv4IntError, match="SGLANG_OPT_FUSE_WQA_WKV=0"):
        cfg.get_quant_method(LinearBase(1, 1), "model.layers.2.self_attn.wqkv_a")
    # Separate layers are fine.
    assert (
        type(cfg.get_quant_method(LinearBase(1, 1), "model.layers.2.self_attn.wkv")).__name__
        == "UnquantizedLinearMethod"
    )


@pytest.mark.parametrize("change,match", [
    (lambda t: t.update({"layers.2.attn.indexer.weights_proj.weight": ("I8", (8, 256))}), "no pattern"),
    (lambda t: t.pop("layers.2.attn.wq_b.scale"), r"layers\.2\.attn\.wq_b\.scale is missing"),
    (lambda t: t.update({"layers.2.attn.wq_b.scale": ("F32", (32, 2))}), "expected BF16"),
    (lambda t: t.update({"layers.2.attn.wq_b.weight": ("U8", (4096, 256))}), "strategy 'block'"),
    (lambda t: t.update({"layers.2.attn.wq_b.weight": ("F8_E4M3", (4096, 256))}), "F8_E4M3"),
])
def test_inconsistent_tensors_are_errors_naming_them(change, match):
    from sglang.srt.layers.linear import LinearBase

    from sglang_ampere.quant.config import Dsv4IntError

    t = _tensors()
    change(t)
    cfg = _config(tensors=t)
    prefix = ("model.layers.2.self_attn.indexer.weights_proj" if "weights_proj" in match or match == "no pattern"
              else "model.layers.2.self_attn.wq_b")
    with pytest.raises(Dsv4IntError, match=match):
        cfg.get_quant_method(LinearBase(1, 1), prefix)


def test_experts_checked_against_the_checkpoint():
    from sglang_ampere.quant.config import Dsv4IntError

    t = _tensors()
    _config(tensors=t).check_experts("model.layers.2.mlp.experts")
    t["layers.2.ffn.experts.0.w1.scale"] = ("F8_E8M0", (256, 8))       # a native MXFP4 scale
    with pytest.raises(Dsv4IntError, match="layers.2.ffn.experts.0.w1"):
        _config(tensors=t).check_experts("model.layers.2.mlp.experts")


def test_from_config_needs_a_local_checkpoint():
    from sglang_ampere.quant.config import Dsv4IntConfig, Dsv4IntError

    class Remote:
        _name_or_path = "someone/not-downloaded-dsv4-int"

    with pytest.raises(Dsv4IntError, match="--model-path"):
        Dsv4IntConfig.from_config({**copy.deepcopy(published_quant_config("block")), "hf_config": Remote()})


def test_native_module_mapping():
    from sglang_ampere.quant.config import native_modules

    assert native_modules("model.layers.3.self_attn.wqkv_a") == ["layers.3.attn.wq_a", "layers.3.attn.wkv"]
    assert native_modules("model.layers.3.mlp.shared_experts.down_proj") == ["layers.3.ffn.shared_experts.w2"]
    assert native_modules("model.decoder.mlp.shared_experts.gate_up_proj") == [
        "mtp.0.ffn.shared_experts.w1",
        "mtp.0.ffn.shared_experts.w3",
    ]
    assert native_modules("model.h_proj") == ["mtp.0.h_proj"]
    assert native_modules("model.layers.4.self_attn.indexer.wq_b") == ["layers.4.attn.indexer.wq_b"]
    # the V4-Flash-0731 DSpark draft builds block mtp.N as stages.N
    assert native_modules("stages.0.main_proj") == ["mtp.0.main_proj"]
    assert native_modules("stages.2.self_attn.wq_a") == ["mtp.2.attn.wq_a"]
    assert native_modules("stages.1.mlp.shared_experts.gate_up_proj") == [
        "mtp.1.ffn.shared_experts.w1",
        "mtp.1.ffn.shared_experts.w3",
    ]
    assert native_modules("stages.1.mlp.experts") == ["mtp.1.ffn.experts"]


def test_fused_block_pair_with_ragged_rows_is_refused():
    from sglang.srt.layers.linear import LinearBase

    from sglang_ampere.quant.config import Dsv4IntError

    t = _tensors()
    t["layers.2.attn.wkv.weight"] = ("I8", (320, 256))
    t["layers.2.attn.wkv.scale"] = ("BF16", (3, 2))
    with pytest.raises(Dsv4IntError, match="SGLANG_OPT_FUSE_WQA_WKV=0"):
        _config(tensors=t).get_quant_method(LinearBase(1, 1), "model.layers.2.self_attn.wqkv_a")


@pytest.mark.parametrize("strategy", ["block", "channel"])
def test_what_convert_writes_parses_back(strategy):
    from sglang_ampere.schema import make_quantization_config

    qc = make_quantization_config(strategy, "mse", ["layers.*.attn.wo_a"])
    assert qc == {
        **published_quant_config(strategy, "mse", ["layers.*.attn.wo_a"]),
        "routed_experts_quant_method": "int4",
    }
    schema = parse_quantization_config(qc)
    assert schema.dense_strategy == strategy and schema.is_ignored("layers.3.attn.wo_a")
