"""The DeepSeek-V4-Flash tensor inventory: which tensors a checkpoint holds, and their roles.

One place for two facts everything else reads:

* :func:`classify` — the role of a tensor from its native name alone (routed-expert MXFP4,
  dense FP8, or preserved), so the converter can refuse unknown names before writing.
* :func:`native_inventory` — every tensor name, shape and on-disk dtype that a native
  checkpoint with a given ``config.json`` must contain (``synth`` writes exactly this; tests
  and ``audit`` compare against it both ways).

Two layouts share the main model and differ under ``mtp.*``: DeepSeek-V4-Flash ships one MTP
block there, DeepSeek-V4-Flash-0731 a DSpark drafter (:func:`has_dspark_drafter`: several
SWA-only blocks, a ``main_proj`` from the target's hidden states into block 0, and a
low-rank Markov head). The DSpark names are those SGLang 0.5.23's
``DeepseekV4ForCausalLMDSpark.load_weights`` maps (docs/dsv4-flash-0731.md).

Shapes are ``[out, in]``. Never imports SGLang.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .formats.constants import BLOCK, MXFP4_GROUP

# Roles. A quantized tensor comes as a ``.weight`` / ``.scale`` pair.
EXPERT = "expert"        # routed expert w1/w2/w3: MXFP4 (native) / INT4 uint4b8 (dsv4_int)
DENSE = "dense"          # FP8 e4m3 + 128x128 E8M0 block scale (native) / INT8 (dsv4_int)
PRESERVED = "preserved"  # copied byte for byte

_BLOCK = r"(?:layers\.\d+|mtp\.\d+)"
_EXPERT_RE = re.compile(rf"^{_BLOCK}\.ffn\.experts\.\d+\.w[123]\.(weight|scale)$")
_DENSE_RE = re.compile(
    rf"^(?:{_BLOCK}\.attn\.(?:wq_a|wq_b|wkv|wo_a|wo_b|indexer\.wq_b)"
    rf"|{_BLOCK}\.ffn\.shared_experts\.w[123]"
    r"|mtp\.\d+\.(?:e_proj|h_proj|main_proj))\.(weight|scale)$"
)
_PRESERVED_RE = re.compile(
    r"^(?:embed\.weight|head\.weight|norm\.weight|hc_head_(?:fn|base|scale)"
    rf"|{_BLOCK}\.(?:attn_norm\.weight|ffn_norm\.weight|hc_(?:attn|ffn)_(?:fn|base|scale)"
    r"|attn\.(?:q_norm\.weight|kv_norm\.weight|attn_sink)"
    r"|attn\.(?:indexer\.)?compressor\.(?:wkv\.weight|wgate\.weight|ape|norm\.weight)"
    r"|attn\.indexer\.weights_proj\.weight"
    r"|ffn\.gate\.(?:weight|bias|tid2eid))"
    r"|mtp\.\d+\.(?:enorm\.weight|hnorm\.weight|norm\.weight|hc_head_(?:fn|base|scale)"
    r"|main_norm\.weight|markov_head\.(?:embed|head)\.weight|confidence_head\.proj\.weight))$"
)

#: config.json keys whose presence marks a checkpoint that bundles a DSpark drafter under
#: ``mtp.*`` (the set SGLang 0.5.23 tests: ``checkpoint_bundles_dspark_draft``).
DSPARK_MARKER_KEYS = ("dspark_block_size", "dspark_markov_rank", "dspark_noise_token_id",
                      "dspark_target_layer_ids")


@dataclass(frozen=True)
class Role:
    role: str            # EXPERT | DENSE | PRESERVED
    part: str | None     # "weight" | "scale" for quantized pairs, None for preserved
    base: str            # name without ".weight"/".scale" for pairs, the name itself otherwise


def classify(name: str) -> Role | None:
    """Role of a native tensor name; ``None`` if the name is not part of DeepSeek-V4-Flash."""
    for role, rx in ((EXPERT, _EXPERT_RE), (DENSE, _DENSE_RE)):
        m = rx.match(name)
        if m:
            return Role(role, m.group(1), name.rsplit(".", 1)[0])
    if _PRESERVED_RE.match(name):
        return Role(PRESERVED, None, name)
    return None


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int, ...]
    dtype: str           # safetensors dtype string: "BF16", "F32", "I64", "I8", "F8_E4M3", "F8_E8M0"
    role: str


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def compress_ratio(config: dict, layer: int) -> int:
    """Compression ratio of a main layer (0 = sliding window only, 4 = CSA, 128 = HCA)."""
    return int(config["compress_ratios"][layer])


def has_dspark_drafter(config: dict) -> bool:
    """Whether ``mtp.*`` holds a DSpark drafter (V4-Flash-0731) rather than the MTP block."""
    return any(config.get(k) is not None for k in DSPARK_MARKER_KEYS)


def draft_problem(speculative: str, config: dict, separate_draft: bool = False) -> str | None:
    """Why ``speculative`` (``"mtp"``: SGLang's EAGLE/NextN; ``"dspark"``) cannot take its draft from
    this checkpoint's ``mtp.*``, or None. ``separate_draft``: the user names the draft checkpoint
    (``--speculative-draft-model-path``), so this one's ``mtp.*`` is not what the draft loads."""
    if separate_draft or speculative not in ("mtp", "dspark"):
        return None
    drafter = has_dspark_drafter(config)
    if speculative == "mtp" and drafter:
        return ("this checkpoint (V4-Flash-0731) holds a DSpark drafter under mtp.*, not the MTP block that "
                "EAGLE/NextN loads (SGLang 0.5.23's NextN loader fails on it): use --speculative dspark (pp 1), "
                "or no speculative decoding")
    if speculative == "dspark" and not drafter:
        return ("this checkpoint has no DSpark drafter (its mtp.* is V4-Flash's MTP block; no dspark_* key in "
                "config.json; the drafter ships with V4-Flash-0731): use --speculative mtp, or name a 0731 "
                "checkpoint with --speculative-draft-model-path DIR")
    return None


def dspark_stages(config: dict) -> int:
    """DSpark blocks: one per target layer whose hidden state feeds ``main_proj``."""
    ids = config.get("dspark_target_layer_ids")
    return len(ids) if ids else int(config.get("num_nextn_predict_layers") or 1)


def dspark_target_features(config: dict) -> int:
    """Target hidden states ``main_proj`` reads (concatenated): one per target layer id,
    all main layers when the config names none (SGLang's fallback)."""
    ids = config.get("dspark_target_layer_ids")
    return len(ids) if ids else int(config["num_hidden_layers"])


def dspark_experts(config: dict) -> int:
    """Routed experts per DSpark block (``dspark_n_routed_experts``, else the main model's)."""
    return int(config.get("dspark_n_routed_experts") or config["n_routed_experts"])


def native_inventory(config: dict) -> dict[str, TensorSpec]:
    """Every tensor of a native DeepSeek-V4-Flash checkpoint with this config, in file order.

    Routed experts are MXFP4 (I8 bytes ``[N, K/2]`` + E8M0 ``[N, K/32]``); dense projections
    FP8 + E8M0 128x128 block scales; everything else preserved with the dtype engines use.
    ``mtp.*`` is the MTP block, or the DSpark drafter when :func:`has_dspark_drafter`.
    """
    H = config["hidden_size"]
    V = config["vocab_size"]
    heads, hd = config["num_attention_heads"], config["head_dim"]
    q_lora = config["q_lora_rank"]
    groups, o_lora = config["o_groups"], config["o_lora_rank"]
    ih, ihd = config["index_n_heads"], config["index_head_dim"]
    E, I = config["n_routed_experts"], config["moe_intermediate_size"]
    topk = config["num_experts_per_tok"]
    shared_I = I * config["n_shared_experts"]
    hc = config["hc_mult"]
    n_layers = config["num_hidden_layers"]
    n_hash = config["num_hash_layers"]

    out: dict[str, TensorSpec] = {}

    def add(name, shape, dtype, role=PRESERVED):
        out[name] = TensorSpec(name, tuple(shape), dtype, role)

    def dense(base, n, k):
        add(f"{base}.weight", (n, k), "F8_E4M3", DENSE)
        add(f"{base}.scale", (_ceil_div(n, BLOCK), _ceil_div(k, BLOCK)), "F8_E8M0", DENSE)

    def expert(base, n, k):
        add(f"{base}.weight", (n, k // 2), "I8", EXPERT)
        add(f"{base}.scale", (n, k // MXFP4_GROUP), "F8_E8M0", EXPERT)

    def compressor(prefix, ratio, dim):
        coff = 2 if ratio == 4 else 1   # ratio-4 compressors pool overlapping windows
        add(f"{prefix}.wkv.weight", (coff * dim, H), "BF16")
        add(f"{prefix}.wgate.weight", (coff * dim, H), "BF16")
        add(f"{prefix}.ape", (ratio, coff * dim), "F32")
        add(f"{prefix}.norm.weight", (dim,), "BF16")

    def block(p, layer_id, ratio, n_experts=E):
        add(f"{p}.attn_norm.weight", (H,), "BF16")
        add(f"{p}.ffn_norm.weight", (H,), "BF16")
        for sub in ("attn", "ffn"):
            add(f"{p}.hc_{sub}_fn", ((2 + hc) * hc, hc * H), "F32")
            add(f"{p}.hc_{sub}_base", ((2 + hc) * hc,), "F32")
            add(f"{p}.hc_{sub}_scale", (3,), "F32")
        a = f"{p}.attn"
        dense(f"{a}.wq_a", q_lora, H)
        add(f"{a}.q_norm.weight", (q_lora,), "BF16")
        dense(f"{a}.wq_b", heads * hd, q_lora)
        dense(f"{a}.wkv", hd, H)
        add(f"{a}.kv_norm.weight", (hd,), "BF16")
        dense(f"{a}.wo_a", groups * o_lora, heads * hd // groups)
        dense(f"{a}.wo_b", H, groups * o_lora)
        add(f"{a}.attn_sink", (heads,), "F32")
        if ratio:
            compressor(f"{a}.compressor", ratio, hd)
        if ratio == 4:
            dense(f"{a}.indexer.wq_b", ih * ihd, q_lora)
            add(f"{a}.indexer.weights_proj.weight", (ih, H), "BF16")
            compressor(f"{a}.indexer.compressor", ratio, ihd)
        f = f"{p}.ffn"
        add(f"{f}.gate.weight", (n_experts, H), "BF16")
        if layer_id < n_hash:
            add(f"{f}.gate.tid2eid", (V, topk), "I64")
        else:
            add(f"{f}.gate.bias", (n_experts,), "F32")
        for e in range(n_experts):
            expert(f"{f}.experts.{e}.w1", I, H)
            expert(f"{f}.experts.{e}.w2", H, I)
            expert(f"{f}.experts.{e}.w3", I, H)
        dense(f"{f}.shared_experts.w1", shared_I, H)
        dense(f"{f}.shared_experts.w2", H, shared_I)
        dense(f"{f}.shared_experts.w3", shared_I, H)

    add("embed.weight", (V, H), "BF16")
    for i in range(n_layers):
        block(f"layers.{i}", i, compress_ratio(config, i))
    add("norm.weight", (H,), "BF16")
    add("head.weight", (V, H), "BF16")
    add("hc_head_fn", (hc, hc * H), "F32")
    add("hc_head_base", (hc,), "F32")
    add("hc_head_scale", (1,), "F32")

    def head_mix(p):
        add(f"{p}.hc_head_fn", (hc, hc * H), "F32")
        add(f"{p}.hc_head_base", (hc,), "F32")
        add(f"{p}.hc_head_scale", (1,), "F32")

    if has_dspark_drafter(config):
        # SGLang builds the blocks as next-n layers (never hash-routed) with SWA-only attention.
        stages, rank = dspark_stages(config), int(config["dspark_markov_rank"])
        last = f"mtp.{stages - 1}"
        for s in range(stages):
            p = f"mtp.{s}"
            block(p, n_layers + s, 0, dspark_experts(config))
            if s == 0:
                dense(f"{p}.main_proj", H, H * dspark_target_features(config))
                add(f"{p}.main_norm.weight", (H,), "BF16")
        add(f"{last}.norm.weight", (H,), "BF16")
        head_mix(last)
        add(f"{last}.markov_head.embed.weight", (V, rank), "BF16")
        add(f"{last}.markov_head.head.weight", (V, rank), "F32")
        if config.get("enable_confidence_head"):
            with_markov = config.get("confidence_head_with_markov", True)
            add(f"{last}.confidence_head.proj.weight", (1, H + (rank if with_markov else 0)), "F32")
        return out
    for m in range(config.get("num_nextn_predict_layers", 0)):
        p = f"mtp.{m}"
        block(p, n_layers + m, compress_ratio(config, n_layers + m))
        dense(f"{p}.e_proj", H, H)
        dense(f"{p}.h_proj", H, H)
        add(f"{p}.enorm.weight", (H,), "BF16")
        add(f"{p}.hnorm.weight", (H,), "BF16")
        add(f"{p}.norm.weight", (H,), "BF16")
        head_mix(p)
    return out
