"""A V4-Flash-0731 checkpoint loads into SGLang 0.5.23's real classes on CPU, drafter included.

* converted (dsv4_int): the target ``DeepseekV4ForCausalLM`` loads every non-``mtp`` tensor
  exactly (``helpers.dsv4int.check_exact``), and the DSpark draft class
  ``DeepseekV4ForCausalLMDSpark`` -- which SGLang picks for a draft whose config has the
  ``dspark_*`` keys -- builds with our per-layer decisions and loads every drafter tensor
  exactly, each at the place written here from the model's structure (not from its loader);
* native (FP8/MXFP4, SGLang's Fp8Config): the target load skips the DSpark tensors (its
  parameters equal those loaded from the V4-Flash layout with the same main tensors), and the
  DSpark draft loads them all.

Every parameter is sentinel-filled before loading and must be covered afterwards.
"""

from __future__ import annotations

import json
import logging

import pytest
import torch

pytest.importorskip("sglang")

import helpers.dsv4int as dsv4int  # noqa: E402
from helpers.convert import fresh_seed  # noqa: E402
from helpers.dsv4int import check_exact, expected_locations, is_sentinel, load_real_model, read_checkpoint  # noqa: E402
from helpers.sglang_cpu import init_sglang_cpu  # noqa: E402

from sglang_ampere.synth import SynthSpec, write_checkpoint  # noqa: E402

pytestmark = pytest.mark.slow

#: The DSpark attention's RadixAttention is ``self_attn.attn``: its KV-cache scales are not
#: checkpoint tensors (-1 means "absent"; see cpu-model-load.md O4).
DSPARK_KV_SCALES = (".self_attn.attn.k_scale", ".self_attn.attn.v_scale")


@pytest.fixture(scope="module")
def sglang_ready():
    init_sglang_cpu()
    from sglang_ampere import plugin

    plugin.register()
    return plugin


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    root = tmp_path_factory.mktemp("load0731")
    seed = fresh_seed()
    native = write_checkpoint(root / "native", SynthSpec(variant="0731"), seed=seed, progress=False)
    plain = write_checkpoint(root / "plain", SynthSpec(), seed=seed, progress=False)
    from sglang_ampere.cli import main as cli

    assert cli(["convert", str(native), str(root / "int"), "--quiet"]) == 0
    return {"native": native, "plain": plain, "int": root / "int"}


@pytest.fixture
def dspark_sentinels(monkeypatch):
    monkeypatch.setattr(dsv4int, "SKIP_PARAMS", dsv4int.SKIP_PARAMS + DSPARK_KV_SCALES)


class _Unexpected(logging.Handler):
    """Collects SGLang's "DSpark V4 draft: unexpected weight" warnings (a name it could not place)."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.names = []

    def emit(self, record):
        if "unexpected weight" in record.getMessage():
            self.names.append(record.getMessage())


def _load(path, draft: bool):
    """helpers.dsv4int.load_real_model for any quant method, failing on the DSpark loader's
    "not found" warnings (a drafter tensor it skipped)."""
    log = logging.getLogger("sglang.srt.models.deepseek_v4_dspark")
    catcher = _Unexpected()
    log.addHandler(catcher)
    try:
        model, mc = load_real_model(path, draft, quantization=None)
    finally:
        log.removeHandler(catcher)
    assert catcher.names == [], catcher.names
    return model, mc


def dspark_locations(ckpt: dict, config: dict, strategy: str):
    """Where each ``mtp.*`` tensor lands in ``DeepseekV4ForCausalLMDSpark``: block ``mtp.N`` is
    ``stages.N``, laid out like a main layer with unfused ``wq_a``/``wkv`` (so the main-layer map
    applies to it under a ``layers.N`` name); the Markov head is ``markov_head.markov_w1`` (the
    embedding) and ``markov_w2`` (the projection), whatever block it is stored under."""
    from sglang.srt.environ import envs

    w2_dtype = torch.bfloat16 if envs.SGLANG_DSPARK_OPT_MARKOV_W2_BF16.get() else torch.float32
    as_layer, out = {}, []
    for name, t in ckpt.items():
        if not name.startswith("mtp."):
            continue
        _, stage, rest = name.split(".", 2)
        if rest == "markov_head.embed.weight":
            out.append((name, "markov_head.markov_w1.weight", (), t))
        elif rest == "markov_head.head.weight":
            out.append((name, "markov_head.markov_w2.weight", (), t.to(w2_dtype)))
        else:
            as_layer[f"layers.{stage}.{rest}"] = (name, t)
    tensors = {k: t for k, (_, t) in as_layer.items()}
    for layer_name, pname, idx, value in expected_locations(tensors, config, strategy, False, nextn=False):
        stage = layer_name.split(".")[1]
        out.append((as_layer[layer_name][0], pname.replace(f"model.layers.{stage}.", f"stages.{stage}.", 1),
                    idx, value))
    return out


def check_locations(model, locations, strict_sentinels: bool) -> None:
    params = dict(model.named_parameters())
    covered = {n: torch.zeros(p.shape, dtype=torch.bool) for n, p in params.items()}
    for name, pname, idx, value in locations:
        assert pname in params, f"{name}: expected parameter {pname} does not exist"
        got = params[pname].data[idx] if idx else params[pname].data
        assert tuple(got.shape) == tuple(value.shape), f"{name} -> {pname}: {tuple(got.shape)} != {tuple(value.shape)}"
        if got.dtype != value.dtype:
            assert got.dtype == torch.float32 and value.dtype in (torch.bfloat16, torch.float8_e8m0fnu), \
                f"{name} -> {pname}: dtype {got.dtype} != {value.dtype}"
            value = value.float()
        if got.dtype == torch.float8_e4m3fn:
            got, value = got.view(torch.uint8), value.view(torch.uint8)
        assert torch.equal(got, value), f"{name} -> {pname}{idx}: values differ"
        covered[pname][idx if idx else ...] = True
    for pname, mask in covered.items():
        if pname.endswith(DSPARK_KV_SCALES):
            continue
        assert bool(mask.all()), f"{pname}: {int((~mask).sum())} of {mask.numel()} elements not from the checkpoint"
        data = params[pname].data
        if data.is_floating_point() and data.dtype != torch.float8_e4m3fn:
            assert not bool(torch.isnan(data).any()), f"{pname} holds NaN"
        elif strict_sentinels and data.dtype != torch.float8_e4m3fn:
            assert not bool(is_sentinel(data).any()), f"{pname} still holds sentinel values"


def test_converted_0731_loads_target_and_dspark_draft_exactly(sglang_ready, ckpts, dspark_sentinels):
    from sglang_ampere.quant.int4_moe import Dsv4Int4MoEMethod
    from sglang_ampere.quant.int8_linear import Dsv4Int8LinearMethod

    path = ckpts["int"]
    ckpt = read_checkpoint(path)
    config = json.loads((path / "config.json").read_text())

    target, _ = load_real_model(path, draft=False)
    assert type(target).__name__ == "DeepseekV4ForCausalLM"
    check_exact(target, ckpt, config, "block", True, nextn=False, strict_sentinels=False)

    draft, mc = load_real_model(path, draft=True)
    assert type(draft).__name__ == "DeepseekV4ForCausalLMDSpark"
    assert mc.hf_config.architectures == ["DeepseekV4ForCausalLMDSpark"]
    assert len(draft.stages) == len(config["dspark_target_layer_ids"])
    check_locations(draft, dspark_locations(ckpt, config, "block"), strict_sentinels=False)
    stage0 = draft.stages[0]
    for layer in (stage0.main_proj, stage0.self_attn.wq_a, stage0.self_attn.wkv, stage0.self_attn.wo_b,
                  draft.stages[2].mlp.shared_experts.gate_up_proj):
        assert isinstance(layer.quant_method, Dsv4Int8LinearMethod)
    assert isinstance(draft.stages[1].mlp.experts.quant_method, Dsv4Int4MoEMethod)
    assert draft.stages[1].mlp.experts.w13_weight.shape[0] == config["dspark_n_routed_experts"]
    assert stage0.self_attn.wo_a.weight.dtype == torch.bfloat16


def test_native_0731_target_skips_the_drafter_and_dspark_loads_it(sglang_ready, ckpts, dspark_sentinels):
    model, mc = _load(ckpts["native"], draft=False)
    assert mc.quantization == "fp8" and type(model).__name__ == "DeepseekV4ForCausalLM"
    plain, _ = _load(ckpts["plain"], draft=False)
    got, want = dict(model.named_parameters()), dict(plain.named_parameters())
    assert got.keys() == want.keys()
    def same(a, b):
        if a.dtype == torch.float8_e4m3fn:
            a, b = a.view(torch.uint8), b.view(torch.uint8)
        return torch.equal(a, b)              # NaN (a sentinel nothing overwrote) never equals

    differ = [n for n in got if not same(got[n].data, want[n].data)]
    assert differ == []

    ckpt = read_checkpoint(ckpts["native"])
    config = json.loads((ckpts["native"] / "config.json").read_text())
    draft, _ = _load(ckpts["native"], draft=True)
    assert type(draft).__name__ == "DeepseekV4ForCausalLMDSpark"
    # wo_a: SGLang dequantizes FP8 to BF16 itself; the map's dequant is for INT8, so leave it out
    locations = dspark_locations({n: t for n, t in ckpt.items() if ".wo_a." not in n}, config, "block")
    wo_a = [n for n, p in draft.named_parameters() if n.endswith(".wo_a.weight")]
    assert len(wo_a) == len(draft.stages)
    params = dict(draft.named_parameters())
    for n in wo_a:
        assert params[n].dtype == torch.bfloat16 and not bool(torch.isnan(params[n]).any()), n
    check_locations(_Without(draft, wo_a), locations, strict_sentinels=False)


class _Without:
    """A model view without some parameters (checked separately)."""

    def __init__(self, model, names):
        self.model, self.names = model, set(names)

    def named_parameters(self):
        return ((n, p) for n, p in self.model.named_parameters() if n not in self.names)
