"""patches/dsv4_loader: INT8 wo_a (both variants) -> BF16; native FP8 unchanged; INT8
tensors SGLang would load into BF16 layers are refused by name."""

from __future__ import annotations

import pytest
import torch

from sglang_ampere.patches.dsv4_loader import dsv4_int_weight_stream


def _block(g, n=256, k=384):
    q = torch.randint(-127, 128, (n, k), generator=g, dtype=torch.int8)
    s = (torch.rand((n + 127) // 128, (k + 127) // 128, generator=g) + 0.5).to(torch.bfloat16)
    full = s.float().repeat_interleave(128, 0)[:n].repeat_interleave(128, 1)[:, :k]
    return q, s, (q.float() * full).to(torch.bfloat16)


def _channel(g, n=256, k=384):
    u = torch.randint(0, 256, (n, k), generator=g, dtype=torch.int16).to(torch.uint8)
    s = (torch.rand(n, generator=g) + 0.5).to(torch.bfloat16)
    return u, s, ((u.float() - 128) * s.float()[:, None]).to(torch.bfloat16)


@pytest.mark.parametrize("variant", [_block, _channel], ids=["block", "channel"])
@pytest.mark.parametrize("scale_first", [False, True])
def test_int8_wo_a_is_dequantized_to_bf16(variant, scale_first):
    g = torch.Generator().manual_seed(1)
    w, s, want = variant(g)
    other = torch.randn(4, dtype=torch.bfloat16)
    pair = [("layers.1.attn.wo_a.weight", w), ("layers.1.attn.wo_a.scale", s)]
    stream = [("layers.1.attn_norm.weight", other)] + (pair[::-1] if scale_first else pair)
    out = list(dsv4_int_weight_stream(iter(stream)))
    names = [n for n, _ in out]
    assert names == ["layers.1.attn_norm.weight", "layers.1.attn.wo_a.weight"]   # scale consumed
    assert out[1][1].dtype == torch.bfloat16 and torch.equal(out[1][1], want)


def test_other_tensors_pass_through_untouched():
    g = torch.Generator().manual_seed(2)
    w, s, _ = _block(g)
    items = [
        ("layers.0.attn.wq_b.weight", w),
        ("layers.0.attn.wq_b.scale", s),
        ("layers.0.ffn.experts.3.w1.weight", w[:, :64]),
        ("layers.0.ffn.gate.tid2eid", torch.zeros(4, 2, dtype=torch.int64)),
    ]
    out = list(dsv4_int_weight_stream(iter(items)))
    assert [n for n, _ in out] == [n for n, _ in items]
    assert all(a is b for (_, a), (_, b) in zip(out, items))


@pytest.mark.parametrize("name", ["layers.2.attn.compressor.wkv.weight", "layers.2.attn.indexer.weights_proj.weight",
                                  "layers.2.attn.indexer.compressor.wgate.weight"])
def test_int8_tensor_for_a_bf16_layer_is_refused_by_name(name):
    with pytest.raises(ValueError, match=name.replace(".", r"\.")):
        list(dsv4_int_weight_stream(iter([(name, torch.zeros(4, 4, dtype=torch.int8))])))


def test_missing_wo_a_scale_is_an_error():
    w = torch.zeros(256, 256, dtype=torch.int8)
    with pytest.raises(ValueError, match=r"layers\.5\.attn\.wo_a\.scale is missing"):
        list(dsv4_int_weight_stream(iter([("layers.5.attn.wo_a.weight", w)])))


def test_bf16_wo_a_without_scale_passes():
    w = torch.randn(256, 256).to(torch.bfloat16)
    out = list(dsv4_int_weight_stream(iter([("layers.5.attn.wo_a.weight", w)])))
    assert out[0][1] is w


def test_hook_routes_by_config_and_leaves_native_fp8_alone():
    """Through the hooked SGLang function: non-dsv4_int configs get SGLang's original FP8
    dequant (same bytes as calling the original directly)."""
    pytest.importorskip("sglang")
    from sglang_ampere import plugin

    plugin.register()
    import sglang.srt.models.deepseek_v4 as dsv4

    hooked = dsv4._prepare_deepseek_v4_weights
    original = hooked.__wrapped__
    g = torch.Generator().manual_seed(3)
    w8 = (torch.randn(256, 256, generator=g) * 10).to(torch.float8_e4m3fn)
    sc = torch.full((2, 2), 127, dtype=torch.uint8).view(torch.float8_e8m0fnu)
    items = [("layers.0.attn.wo_a.weight", w8), ("layers.0.attn.wo_a.scale", sc)]
    got = list(hooked(iter(items), None))
    want = list(original(iter(items), None))
    assert [n for n, _ in got] == [n for n, _ in want] == ["layers.0.attn.wo_a.weight"]
    assert torch.equal(got[0][1], want[0][1]) and got[0][1].dtype == torch.bfloat16

    class Cfg:
        def get_name(self):
            return "dsv4_int"

    w, s, want_bf16 = _block(g)
    out = list(hooked(iter([("layers.0.attn.wo_a.weight", w), ("layers.0.attn.wo_a.scale", s)]), Cfg()))
    assert torch.equal(out[0][1], want_bf16)


def test_dspark_main_proj_may_be_int8_but_not_its_markov_head():
    """The 0731 drafter's main_proj is a quantized ReplicatedLinear; its Markov head is an
    embedding/nn.Linear SGLang builds without a quant method."""
    g = torch.Generator().manual_seed(5)
    w, s, _ = _block(g)
    out = list(dsv4_int_weight_stream(iter([("mtp.0.main_proj.weight", w), ("mtp.0.main_proj.scale", s)])))
    assert [n for n, _ in out] == ["mtp.0.main_proj.weight", "mtp.0.main_proj.scale"] and out[0][1] is w
    with pytest.raises(ValueError, match=r"mtp\.2\.markov_head\.embed\.weight is torch\.int8.*Keep this tensor BF16"):
        list(dsv4_int_weight_stream(iter([("mtp.2.markov_head.embed.weight", w)])))


class _QC:
    def __init__(self, name):
        self.name = name

    def get_name(self):
        return self.name


class _Draft:
    def __init__(self, quant_config):
        self.quant_config = quant_config


def test_dspark_load_weights_hook_applies_the_stream_for_dsv4_int_only():
    from sglang_ampere.patches.dsv4_loader import dspark_load_weights

    g = torch.Generator().manual_seed(6)
    w, s, want = _block(g)
    seen = {}

    def original(self, weights):
        seen[self.quant_config and self.quant_config.get_name()] = weights
        return "done"

    stream = [("mtp.1.attn.wo_a.weight", w), ("mtp.1.attn.wo_a.scale", s)]
    assert dspark_load_weights(original, _Draft(_QC("dsv4_int")), iter(stream)) == "done"
    got = list(seen["dsv4_int"])
    assert [n for n, _ in got] == ["mtp.1.attn.wo_a.weight"] and torch.equal(got[0][1], want)
    for qc in (_QC("fp8"), None):
        native = iter(stream)
        dspark_load_weights(original, _Draft(qc), native)
        assert seen[qc and qc.get_name()] is native          # handed over unchanged
