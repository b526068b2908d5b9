"""The dtype and scale-shape rules that the converter, the audit and the serving config share."""

from sglang_ampere import rules


def test_scale_shapes():
    assert rules.native_expert_scale_shape((2048, 2048)) == (2048, 128)     # K = 4096, MXFP4 group 32
    assert rules.expert_scale_shape((2048, 2048)) == (2048, 128)            # INT4 group 32
    assert rules.dense_scale_shape("block", (4096, 1000)) == (32, 8)        # ceil(1000 / 128)
    assert rules.dense_scale_shape("channel", (4096, 1000)) == (4096,)


def test_dense_int8_layouts():
    assert rules.dense_int8_strategy("I8", (256, 512), ("BF16", (2, 4))) == "block"
    assert rules.dense_int8_strategy("U8", (256, 512), ("BF16", (256,))) == "channel"
    assert rules.dense_int8_strategy("I8", (256, 512), ("BF16", (256,))) is None     # int8 with a channel scale
    assert rules.dense_int8_strategy("I8", (256, 512), ("F32", (2, 4))) is None
    assert rules.dense_int8_strategy("I8", (256, 512), None) is None
    assert "strategy 'channel'" in rules.dense_int8_weight_problem("channel", "I8", (256, 512))
    assert rules.dense_int8_scale_problem("block", (256, 512), ("BF16", (2, 4))) is None
    assert "expected BF16 [256]" in rules.dense_int8_scale_problem("channel", (256, 512), ("BF16", (2, 4)))


def test_expert_and_native_pairs():
    assert rules.expert_problem("I8", (64, 128), ("BF16", (64, 8))) is None
    assert rules.expert_problem("I8", (64, 128), None) == rules.MISSING_SCALE
    assert "expert scale must be BF16 [64, 8]" in rules.expert_problem("I8", (64, 128), ("F8_E8M0", (64, 8)))
    assert rules.native_expert_problem("I8", (64, 128), "F8_E8M0", (64, 8)) is None
    assert rules.native_expert_problem("F8_E4M3", (64, 128), "F8_E8M0", (64, 8))[0] == "weight"
    part, reason = rules.native_dense_problem("F8_E4M3", (256, 512), "F8_E8M0", (2, 3), weight_name="x.weight")
    assert part == "scale" and reason == "scale shape [2, 3] does not fit weight x.weight [256, 512] (expected [2, 4])"


def test_duplicates_found_once_with_the_first_shard():
    where, dups = rules.locate_tensors({"a.safetensors": ["x", "y"], "b.safetensors": ["y", "z"]})
    assert where == {"x": "a.safetensors", "y": "a.safetensors", "z": "b.safetensors"}
    assert dups == [("b.safetensors", "y", "a.safetensors")]
