"""A dsv4_int checkpoint loads into SGLang 0.5.23's real DeepseekV4ForCausalLM on CPU.

Through SGLang's own ModelConfig -> get_quant_config (our Dsv4IntConfig.from_config) ->
_initialize_model -> load_weights (with our loader hook) -> postprocess path. Every parameter
is pre-filled with a sentinel, then every checkpoint tensor is compared exactly (values and
shapes) at its independently expected place, and every element of every parameter must be
covered -- SGLang itself silently skips missing expert tensors and zero-pads narrow ones.
The MTP layer loads through the next-n draft class ``DeepseekV4ForCausalLMNextN``.
"""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("sglang")

from helpers.dsv4int import check_exact, load_real_model, random_dsv4_int, read_checkpoint
from helpers.sglang_cpu import init_sglang_cpu


@pytest.fixture(scope="module")
def sglang_ready():
    init_sglang_cpu()
    from sglang_ampere import plugin

    plugin.register()
    return plugin


@pytest.fixture(
    scope="module",
    params=[("random", "block"), ("random", "channel"), ("convert", "block"), ("convert", "channel")],
    ids=lambda p: "-".join(p),
)
def int_ckpt(request, synth_ckpt, tmp_path_factory):
    """``random``: codes avoid every sentinel value, so a byte SGLang never wrote cannot pass
    as checkpoint data. ``convert``: the real pipeline, ``sglang-ampere synth`` -> ``convert``."""
    source, strategy = request.param
    out = tmp_path_factory.mktemp(f"dsv4int_{source}_{strategy}") / "ckpt"
    if source == "random":
        return strategy, random_dsv4_int(synth_ckpt, out, strategy, seed=7)
    from sglang_ampere.cli import main as cli

    assert cli(["convert", str(synth_ckpt), str(out), "--dense-int8", strategy, "--quiet"]) == 0
    return strategy, out


@pytest.mark.parametrize("fused", [True, False], ids=["fuse_wqa_wkv", "separate_wqa_wkv"])
def test_target_and_mtp_load_exactly(sglang_ready, int_ckpt, fused, monkeypatch):
    from sglang_ampere.quant.int4_moe import Dsv4Int4MoEMethod
    from sglang_ampere.quant.int8_linear import Dsv4Int8LinearMethod

    strategy, path = int_ckpt
    random = "random" in str(path.parent.name)
    monkeypatch.setenv("SGLANG_OPT_FUSE_WQA_WKV", str(fused))      # as SGLang's envs.X.set writes it
    ckpt = read_checkpoint(path)
    config = json.loads((path / "config.json").read_text())
    model, mc = load_real_model(path, draft=False)
    check_exact(model, ckpt, config, strategy, fused, nextn=False, strict_sentinels=random)

    methods = {
        type(m.quant_method).__name__ for m in model.modules() if getattr(m, "quant_method", None) is not None
    }
    assert {"Dsv4Int8LinearMethod", "Dsv4Int4MoEMethod", "UnquantizedLinearMethod"} <= methods
    attn = model.model.layers[2].self_attn
    assert isinstance((attn.wqkv_a if fused else attn.wq_a).quant_method, Dsv4Int8LinearMethod)
    assert isinstance(attn.indexer.wq_b.quant_method, Dsv4Int8LinearMethod)
    assert type(attn.indexer.weights_proj.quant_method).__name__ == "UnquantizedLinearMethod"
    assert attn.wo_a.weight.dtype == torch.bfloat16
    assert isinstance(model.model.layers[0].mlp.experts.quant_method, Dsv4Int4MoEMethod)

    draft, _ = load_real_model(path, draft=True)
    assert type(draft).__name__ == "DeepseekV4ForCausalLMNextN"
    check_exact(draft, ckpt, config, strategy, fused, nextn=True, strict_sentinels=random)
    assert isinstance(draft.model.e_proj.quant_method, Dsv4Int8LinearMethod)


def test_negative_control_a_missing_expert_scale_is_caught(sglang_ready, synth_ckpt, tmp_path):
    """SGLang loads a checkpoint missing one expert's w2 scale without a word (the fused
    parameter counts as loaded); this test's coverage check must catch it."""
    import shutil

    from safetensors.torch import load_file, save_file

    src = random_dsv4_int(synth_ckpt, tmp_path / "full", "block", seed=9)
    dst = tmp_path / "missing"
    shutil.copytree(src, dst)
    victim = "layers.3.ffn.experts.1.w2.scale"
    index = json.loads((dst / "model.safetensors.index.json").read_text())
    shard = index["weight_map"].pop(victim)
    tensors = load_file(str(dst / shard))
    del tensors[victim]
    save_file(tensors, str(dst / shard), metadata={"format": "pt"})
    (dst / "model.safetensors.index.json").write_text(json.dumps(index))

    model, _ = load_real_model(dst, draft=False)
    config = json.loads((dst / "config.json").read_text())
    with pytest.raises(
        AssertionError,
        match=r"model\.layers\.3\.mlp\.experts\.w2_weight_scale_inv: \d+ of \d+ elements not from the checkpoint",
    ):
        check_exact(model, read_checkpoint(dst), config, "block", True, nextn=False)
