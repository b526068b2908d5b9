"""dsv4_int test checkpoints and an SGLang-independent map of where each tensor must land.

* :func:`published_quant_config` -- the quantization_config of the published dsv4_int
  checkpoints (reference dsv4-flash-format.md section 7).
* :func:`random_dsv4_int` -- a stand-in converter for loader tests: turns a native synth
  checkpoint into a valid dsv4_int one with random codes/scales (values only need to be
  valid and distinguishable, the loader test compares them exactly). The real
  ``sglang-ampere convert`` is exercised by the synth -> convert test when available.
* :func:`expected_locations` -- for each checkpoint tensor, the SGLang parameter and the
  slice of it that must hold the tensor's values (written from the model's structure, not
  from SGLang's loader code).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from sglang_ampere.formats.blocks import block_scale_shape, expand_block_scale
from sglang_ampere.inventory import DENSE, EXPERT, classify

DENSE_TARGETS = ["*.attn.wq_a", "*.attn.wq_b", "*.attn.wkv", "*.attn.wo_a", "*.attn.wo_b",
                 "*.attn.indexer.wq_b", "*.attn.indexer.compressor.wkv",
                 "*.attn.indexer.compressor.wgate", "*.ffn.shared_experts.w1",
                 "*.ffn.shared_experts.w2", "*.ffn.shared_experts.w3", "mtp.*.e_proj", "mtp.*.h_proj"]


def published_quant_config(strategy: str, scale_mode: str = "mse", extra_ignore=()) -> dict:
    weights = {"num_bits": 8, "type": "int", "symmetric": True, "strategy": strategy}
    if strategy == "block":
        weights["block_size"] = [128, 128]
    return {
        "quant_method": "dsv4_int",
        "format": "int_packed",
        "config_groups": {
            "experts_w4a16": {
                "weights": {"num_bits": 4, "type": "int", "format": "int4", "symmetric": True,
                            "group_size": 32, "strategy": "group", "scale_mode": scale_mode},
                "input_activations": {"num_bits": 16, "type": "float"},
                "targets": ["*.ffn.experts.*.w1", "*.ffn.experts.*.w2", "*.ffn.experts.*.w3"],
            },
            "linears_w8a16": {
                "weights": weights,
                "input_activations": {"num_bits": 16, "type": "float"},
                "targets": list(DENSE_TARGETS),
            },
        },
        "ignore": ["embed", "head", "norm", "lm_head", "*norm.weight", "attn.attn_sink",
                   "*.gate.*", "hc_*", "*.hc_attn_*", "*.hc_ffn_*", *extra_ignore],
    }


def random_dsv4_int(native: Path, out: Path, strategy: str, seed: int = 0) -> Path:
    """Native checkpoint -> dsv4_int layout with random INT8/INT4 codes and BF16 scales.

    Codes avoid the loader sentinels: int8 in -127..127, uint8 in 1..255.
    """
    g = torch.Generator().manual_seed(seed)
    out.mkdir(parents=True)
    index = json.loads((native / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    total = 0
    for shard in shards:
        tensors = {}
        with safe_open(str(native / shard), "pt") as f:
            for name in f.keys():
                t = f.get_tensor(name)
                role = classify(name)
                assert role is not None, f"synth wrote an unknown tensor {name}"
                if role.role == DENSE and role.part == "weight":
                    n, k = t.shape
                    if strategy == "block":
                        t = torch.randint(-127, 128, (n, k), generator=g, dtype=torch.int8)
                    else:
                        t = torch.randint(1, 256, (n, k), generator=g, dtype=torch.int16).to(torch.uint8)
                elif role.role == DENSE:
                    n, k = (f.get_slice(role.base + ".weight").get_shape())
                    shape = block_scale_shape(n, k) if strategy == "block" else (n,)
                    t = (0.5 + torch.rand(shape, generator=g)).mul(2.0 ** -8).to(torch.bfloat16)
                elif role.role == EXPERT and role.part == "weight":
                    t = torch.randint(-127, 128, tuple(t.shape), generator=g, dtype=torch.int8)
                elif role.role == EXPERT:
                    t = (0.5 + torch.rand(tuple(t.shape), generator=g)).mul(2.0 ** -6).to(torch.bfloat16)
                tensors[name] = t.contiguous()
                total += t.numel() * t.element_size()
        save_file(tensors, str(out / shard), metadata={"format": "pt"})
    (out / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": total},
                                                                  "weight_map": index["weight_map"]}))
    config = json.loads((native / "config.json").read_text())
    config["quantization_config"] = published_quant_config(strategy)
    config["expert_dtype"] = "int4"
    (out / "config.json").write_text(json.dumps(config, indent=1))
    for extra in native.iterdir():
        if extra.suffix == ".json" and not (out / extra.name).exists():
            shutil.copy(extra, out / extra.name)
    return out


def read_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    out = {}
    for shard in sorted(path.glob("*.safetensors")):
        with safe_open(str(shard), "pt") as f:
            for name in f.keys():
                out[name] = f.get_tensor(name)
    return out


# --- where each tensor lands ----------------------------------------------------------------

def _dequant_bf16(w: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """Independent INT8 dequant (not via the package's codecs)."""
    if w.dtype == torch.int8:
        full = expand_block_scale(s.float(), *w.shape)
        return (w.float() * full).to(torch.bfloat16)
    return ((w.to(torch.int32) - 128).float() * s.float()[:, None]).to(torch.bfloat16)


def expected_locations(ckpt: dict[str, torch.Tensor], config: dict, strategy: str, fused_wqa_wkv: bool,
                       nextn: bool) -> list[tuple[str, str, tuple, torch.Tensor]]:
    """``[(checkpoint name, param name, index tuple, expected value)]`` for the target model
    (``nextn=False``: every non-``mtp`` tensor) or the MTP draft (``nextn=True``)."""
    q_lora, hd = config["q_lora_rank"], config["head_dim"]
    inter = config["moe_intermediate_size"] * config["n_shared_experts"]
    moe_i = config["moe_intermediate_size"]
    out = []

    def rows(start, size, is_scale):
        if is_scale and strategy == "block":
            return (slice(start // 128, (start + size + 127) // 128),)
        return (slice(start, start + size),)

    for name, t in ckpt.items():
        is_mtp = name.startswith("mtp.")
        if is_mtp != nextn:
            continue
        p, value, idx = name, t, ()
        if nextn:
            rest = name.split(".", 2)[2]
            top = {"e_proj": "model.e_proj", "h_proj": "model.h_proj", "enorm": "model.enorm",
                   "hnorm": "model.hnorm"}
            head = rest.split(".")[0]
            if head in top:
                p = top[head] + rest[len(head):]
            elif rest == "norm.weight":
                p = "model.shared_head.norm.weight"
            elif rest.startswith("hc_head_"):
                p = "model." + rest
            else:
                p = "model.decoder." + rest
        elif name.startswith("layers."):
            p = "model." + name
        elif name == "embed.weight":
            p = "model.embed_tokens.weight"
        elif name == "head.weight":
            p = "lm_head.weight"
        elif name == "norm.weight":
            p = "model.norm.weight"
        elif name.startswith("hc_head_"):
            p = "model." + name
        p = (p.replace(".attn.", ".self_attn.").replace(".ffn.", ".mlp.")
             .replace(".attn_norm.", ".input_layernorm.").replace(".ffn_norm.", ".post_attention_layernorm."))
        is_scale = p.endswith(".scale")
        if is_scale:
            p = p[: -len(".scale")] + ".weight_scale_inv"
        leaf = p.rsplit(".", 2)
        if ".self_attn.wo_a." in p:
            if is_scale:
                continue                       # folded into the BF16 wo_a
            value = _dequant_bf16(t, ckpt[name[: -len("weight")] + "scale"])
        elif fused_wqa_wkv and (".self_attn.wq_a." in p or ".self_attn.wkv." in p) and ".compressor." not in p:
            is_q = ".wq_a." in p
            p = p.replace(".wq_a.", ".wqkv_a.").replace(".wkv.", ".wqkv_a.")
            idx = rows(0 if is_q else q_lora, q_lora if is_q else hd, is_scale)
        elif ".compressor.wkv." in p or ".compressor.wgate." in p:
            dim = t.shape[0]
            is_kv = ".wkv." in p
            p = p.replace(".wkv.", ".wkv_gate.").replace(".wgate.", ".wkv_gate.")
            idx = (slice(0, dim),) if is_kv else (slice(dim, 2 * dim),)
        elif p.endswith(".compressor.ape") and t.shape[0] == 4:
            a, b = torch.chunk(t, 2, dim=-1)
            value = torch.cat([a, b], dim=0).view(4, -1)
        elif ".mlp.gate.bias" in p:
            p = p.replace(".gate.bias", ".gate.e_score_correction_bias")
        elif ".mlp.gate.tid2eid" in p:
            p = p.replace(".gate.tid2eid", ".topk.tid2eid")
            value = t.to(torch.int32)
        elif ".mlp.experts." in p:
            base, e, w, kind = p.rsplit(".", 3)
            suffix = "_weight" if kind == "weight" else "_weight_scale_inv"
            if w == "w2":
                p, idx = f"{base}.w2{suffix}", (int(e),)
            else:
                p = f"{base}.w13{suffix}"
                idx = (int(e), slice(0, moe_i) if w == "w1" else slice(moe_i, 2 * moe_i))
        elif ".mlp.shared_experts." in p:
            base, w, kind = p.rsplit(".", 2)
            kind = "weight" if kind == "weight" else "weight_scale_inv"
            if w == "w2":
                p = f"{base}.down_proj.{kind}"
            else:
                p = f"{base}.gate_up_proj.{kind}"
                idx = rows(0 if w == "w1" else inter, inter, kind != "weight")
        del leaf
        out.append((name, p, idx, value))
    return out


# --- sentinels ------------------------------------------------------------------------------

SKIP_PARAMS = ("attn_mqa.k_scale", "attn_mqa.v_scale")


def sentinel_fill(model: torch.nn.Module) -> None:
    """NaN for floats, -128 int8, 0 uint8, INT_MIN int32: values no checkpoint tensor holds."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if any(s in name for s in SKIP_PARAMS):
                continue
            if p.dtype.is_floating_point:
                p.data.fill_(float("nan"))
            elif p.dtype == torch.int8:
                p.data.fill_(-128)
            elif p.dtype == torch.uint8:
                p.data.fill_(0)
            else:
                assert p.dtype == torch.int32, f"no sentinel for {name} {p.dtype}"
                p.data.fill_(torch.iinfo(torch.int32).min)


def is_sentinel(t: torch.Tensor) -> torch.Tensor:
    if t.dtype.is_floating_point:
        return torch.isnan(t)
    return t == {torch.int8: -128, torch.uint8: 0, torch.int32: torch.iinfo(torch.int32).min}[t.dtype]


# --- SGLang's real loader on CPU ---------------------------------------------------------------

#: Per-layer RoPE tables are sized by max_position_embeddings (1M in the release config);
#: keep them small on CPU. Only RoPE buffers depend on these values.
SMALL_ROPE = {"max_position_embeddings": 4096,
              "rope_scaling": {"type": "yarn", "factor": 4, "original_max_position_embeddings": 1024,
                               "beta_fast": 32, "beta_slow": 1}}


def check_exact(model, ckpt, config, strategy, fused, nextn, strict_sentinels=True):
    """Every checkpoint tensor equals its parameter slice at :func:`expected_locations` (values,
    shapes; BF16 norms may sit in float32), and every element of every parameter came from the
    checkpoint: no NaN, and with ``strict_sentinels`` no sentinel value left."""
    params = dict(model.named_parameters())
    covered = {n: torch.zeros(p.shape, dtype=torch.bool) for n, p in params.items()}
    for name, pname, idx, value in expected_locations(ckpt, config, strategy, fused, nextn):
        assert pname in params, f"{name}: expected parameter {pname} does not exist"
        got = params[pname].data[idx] if idx else params[pname].data
        assert tuple(got.shape) == tuple(value.shape), (
            f"{name} -> {pname}{idx}: shape {tuple(got.shape)} != {tuple(value.shape)}"
        )
        if got.dtype != value.dtype:
            # SGLang keeps some BF16 checkpoint tensors (norms) in float32: a lossless upcast.
            assert got.dtype == torch.float32 and value.dtype == torch.bfloat16, \
                f"{name} -> {pname}: dtype {got.dtype} != {value.dtype}"
            value = value.float()
        assert torch.equal(got, value), f"{name} -> {pname}{idx}: values differ"
        covered[pname][idx if idx else ...] = True
    shared = ("embed_tokens", "lm_head") if nextn else ()
    for pname, mask in covered.items():
        if any(s in pname for s in ("attn_mqa.k_scale", "attn_mqa.v_scale") + shared):
            continue
        assert bool(mask.all()), f"{pname}: {int((~mask).sum())} of {mask.numel()} elements not from the checkpoint"
        data = params[pname].data
        if data.is_floating_point():
            assert not bool(torch.isnan(data).any()), f"{pname} holds NaN"
        elif strict_sentinels:
            assert not bool(is_sentinel(data).any()), f"{pname} still holds sentinel values"


def init_model(path, draft: bool = False, context_length: int | None = None, quantization: str | None = None):
    """SGLang's ModelConfig (with the tests' :data:`SMALL_ROPE`) and its model built on the CPU,
    no weight loaded: the first half of DefaultModelLoader.load_model. Returns
    ``(model, model config, loader)``. ``quantization``: the method SGLang's ModelConfig must
    have detected (None: any)."""
    from sglang.srt.configs.load_config import LoadConfig
    from sglang.srt.configs.model_config import ModelConfig
    from sglang.srt.model_loader.loader import (
        DefaultModelLoader,
        _get_quantization_config,
        _initialize_model,
        set_default_torch_dtype,
    )

    mc = ModelConfig(str(path), dtype="bfloat16", is_draft_model=draft, context_length=context_length,
                     model_override_args=json.dumps(SMALL_ROPE))
    assert quantization is None or mc.quantization == quantization, (
        f"{path}: SGLang detected quantization {mc.quantization!r}, not {quantization!r}")
    loader = DefaultModelLoader(LoadConfig())
    with set_default_torch_dtype(mc.dtype), torch.device("cpu"):
        model = _initialize_model(mc, loader.load_config, _get_quantization_config(mc, loader.load_config))
    return model, mc, loader


def load_real_model(path, draft: bool, sentinels: bool = True, quantization: str | None = "dsv4_int"):
    """SGLang's DefaultModelLoader.load_model, split open only to sentinel-fill in between
    (``quantization`` as in :func:`init_model`)."""
    from sglang.srt.model_loader.loader import set_default_torch_dtype

    model, mc, loader = init_model(path, draft, quantization=quantization)
    with set_default_torch_dtype(mc.dtype):
        if sentinels:
            sentinel_fill(model)
        loader.load_weights_and_postprocess(model, loader._get_all_weights(mc, model), torch.device("cpu"))
    return model, mc


