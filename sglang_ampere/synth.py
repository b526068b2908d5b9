"""``sglang-ampere synth OUT``: a small native-format DeepSeek-V4-Flash checkpoint.

The checkpoint has the real tensor names, dtypes and ``config.json`` keys (see
:mod:`sglang_ampere.inventory`), at scaled-down sizes by default and at the real sizes with
flags. Routed experts are MXFP4 + E8M0, dense projections FP8 e4m3 + E8M0 128x128 block
scales, everything else BF16/F32/I64, exactly as the release stores them. Values look like
trained weights: Gaussian scaled by fan-in, with a per-row log-normal spread of magnitudes
and rare outliers, so scales span many exponents; nothing is all-zero. Every tensor is drawn from its own generator
seeded by (``--seed``, tensor name), so the bytes do not depend on shard layout.

``--variant 0731`` writes the DeepSeek-V4-Flash-0731 layout instead: the same main model,
with a DSpark drafter under ``mtp.*`` in place of the MTP block (``dspark_*`` config keys;
see :mod:`sglang_ampere.inventory` and docs/dsv4-flash-0731.md).

The checkpoint is written into a temporary folder beside OUT and renamed into place at the
end, so an interrupted run leaves nothing that looks like a checkpoint.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import tempfile
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path

from . import MODEL_ARCHITECTURE
from .formats.constants import BLOCK
from .inventory import DENSE, EXPERT, TensorSpec, native_inventory

BOS, EOS, PAD = "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜▁pad▁｜>"
SPECIAL_TOKENS = (BOS, EOS, PAD)
#: DeepSeek-V4's chat tokens: every token SGLang 0.5.23's ``dsv4`` chat encoder looks up in the
#: tokenizer's added vocabulary (the server refuses to start without them). SGLang forces that
#: encoder for any ``DeepseekV4*`` architecture (entrypoints/openai/chat_encoding.py:45) and it
#: renders through deepseek-recipe (parser/deepseek_recipe_renderer.py:113, ``SpecialTokens(image=
#: IMAGE_TOKEN)``): recipe's special-token kinds other than BOS/EOS, in its order (deepseek_recipe
#: 0.2.0 _native.pyi:21-36; the image token spelled as SGLang's IMAGE_TOKEN, renderer.py:20), then
#: SGLang's quick-instruction task tokens (renderer.py:24-31, looked up by ``token_to_id``).
#: tests/test_synth_chat_tokens.py checks this tuple against those sources.
CHAT_TOKENS = (
    "<think>", "</think>", "<｜System｜>", "<｜User｜>", "<｜Assistant｜>", "<｜latest_reminder｜>",
    "｜DSML｜", "<｜deepseek_image｜>", "<｜ref｜>", "<｜/ref｜>", "<｜box｜>", "<｜/box｜>",
    "<｜point｜>", "<｜/point｜>", "<｜polygon｜>", "<｜/polygon｜>",
    "<｜action｜>", "<｜query｜>", "<｜authority｜>", "<｜domain｜>", "<｜title｜>", "<｜read_url｜>",
)
THINK_START, THINK_END, USER, ASSISTANT = CHAT_TOKENS[0], CHAT_TOKENS[1], CHAT_TOKENS[3], CHAT_TOKENS[4]
#: Tokenizer ids: BOS/EOS/PAD 0-2, one token per byte value 3-258, the chat tokens from 259.
BYTE_IDS = range(len(SPECIAL_TOKENS), len(SPECIAL_TOKENS) + 256)
#: Ids the tokenizer uses (the first TOKENIZER_IDS of the vocabulary); ``--vocab`` must cover them.
TOKENIZER_IDS = BYTE_IDS.stop + len(CHAT_TOKENS)
#: Fixed by the architecture (448 no-RoPE + 64 RoPE dims; indexer head 128); not scaled down.
HEAD_DIM, ROPE_DIM, INDEX_HEAD_DIM = 512, 64, 128
#: Checkpoint layouts: the V4-Flash release (MTP block) and V4-Flash-0731 (DSpark drafter).
VARIANTS = ("v4-flash", "0731")
#: Draft block size (gamma) written for 0731: SGLang's DSpark default (DEFAULT_DSPARK_GAMMA).
DSPARK_BLOCK_SIZE = 7


@dataclass
class SynthSpec:
    """Sizes of the synthetic model. Defaults are small; the real model is in ``REAL``."""

    layers: int = 4
    experts: int = 8
    topk: int = 2
    hidden: int = 256
    moe_inter: int = 256
    heads: int = 8
    q_lora_rank: int = 256
    o_groups: int = 2
    o_lora_rank: int = 256
    index_heads: int = 8
    vocab: int = 512
    hash_layers: int = 2
    mtp: int = 1
    variant: str = "v4-flash"
    dspark_stages: int = 3        # 0731 only: drafter blocks = target layers feeding it
    dspark_experts: int = 4       # 0731 only: routed experts per drafter block
    dspark_markov_rank: int = 64  # 0731 only: Markov head rank

    def validate(self) -> None:
        def need(ok, msg):
            if not ok:
                raise ValueError(msg)

        for field in ("hidden", "moe_inter", "q_lora_rank", "o_lora_rank"):
            v = getattr(self, field)
            need(
                v > 0 and v % BLOCK == 0,
                f"--{field.replace('_', '-')} must be a positive multiple of {BLOCK} (kernel tiles), got {v}",
            )
        need(self.layers >= 1, "--layers must be at least 1")
        need(1 <= self.topk <= self.experts, f"--topk ({self.topk}) must be between 1 and --experts ({self.experts})")
        need(
            self.heads % self.o_groups == 0, f"--heads ({self.heads}) must be divisible by --o-groups ({self.o_groups})"
        )
        need((self.heads * HEAD_DIM // self.o_groups) % BLOCK == 0, "heads * 512 / o_groups must be a multiple of 128")
        need(self.index_heads >= 1 and self.heads >= 1, "--heads and --index-heads must be positive")
        need(0 <= self.hash_layers <= self.layers, f"--hash-layers must be between 0 and --layers ({self.layers})")
        need(
            self.vocab >= TOKENIZER_IDS,
            f"--vocab must be at least {TOKENIZER_IDS} (byte-level tokenizer and DeepSeek-V4's chat tokens)",
        )
        need(self.mtp in (0, 1), "--mtp must be 0 or 1")
        need(self.variant in VARIANTS, f"--variant must be one of {', '.join(VARIANTS)}, got {self.variant!r}")
        if self.variant == "0731":
            need(1 <= self.dspark_stages <= self.layers,
                 f"--dspark-stages must be between 1 and --layers ({self.layers})")
            need(self.dspark_experts >= self.topk,
                 f"--dspark-experts ({self.dspark_experts}) must be at least --topk ({self.topk})")
            need(self.dspark_markov_rank >= 1, "--dspark-markov-rank must be positive")

    @property
    def draft_layers(self) -> int:
        """Layers under ``mtp.*``: the MTP block, or the DSpark drafter's blocks (0731)."""
        return self.dspark_stages if self.variant == "0731" else self.mtp


#: DeepSeek-V4-Flash's real sizes (reference table 3.1), for benchmarks.
#: The 0731 drafter sizes beyond the main model's (expert count, Markov rank) are not in SGLang;
#: REAL uses the main model's expert count and an illustrative rank (docs/dsv4-flash-0731.md).
REAL = SynthSpec(layers=43, experts=256, topk=6, hidden=4096, moe_inter=2048, heads=64, q_lora_rank=1024,
                 o_groups=8, o_lora_rank=1024, index_heads=64, vocab=129280, hash_layers=3, mtp=1,
                 dspark_stages=3, dspark_experts=256, dspark_markov_rank=256)


def compress_ratios(layers: int, mtp: int) -> list[int]:
    """The release's pattern: layers 0-1 window only, then 4 (CSA) on even, 128 (HCA) on odd; MTP 0."""
    return [0 if i < 2 else (4 if i % 2 == 0 else 128) for i in range(layers)] + [0] * mtp


def dspark_target_layer_ids(layers: int, stages: int) -> list[int]:
    """Target layers feeding the drafter: ``stages`` layers spread evenly, ending at the last."""
    return sorted({layers - 1 - (i * layers) // stages for i in range(stages)})


def dspark_keys(spec: SynthSpec) -> dict:
    """The 0731 config keys SGLang's DSpark drafter reads (dspark_config.py, deepseek_v4_dspark.py)."""
    return {
        "dspark_block_size": DSPARK_BLOCK_SIZE,
        "dspark_markov_rank": spec.dspark_markov_rank,
        "dspark_n_routed_experts": spec.dspark_experts,
        "dspark_noise_token_id": SPECIAL_TOKENS.index(PAD),
        "dspark_target_layer_ids": dspark_target_layer_ids(spec.layers, spec.dspark_stages),
    }


def make_config(spec: SynthSpec) -> dict:
    """config.json with the same keys as the release's (values scaled down per ``spec``)."""
    config = _base_config(spec)
    if spec.variant == "0731":
        config.update(dspark_keys(spec))
    return config


def _base_config(spec: SynthSpec) -> dict:
    return {
        "architectures": [MODEL_ARCHITECTURE],
        "model_type": "deepseek_v4",
        "attention_bias": False,
        "attention_dropout": 0.0,
        "bos_token_id": 0,
        "eos_token_id": 1,
        "compress_ratios": compress_ratios(spec.layers, spec.draft_layers),
        "compress_rope_theta": 160000,
        "expert_dtype": "fp4",
        "hc_eps": 1e-6,
        "hc_mult": 4,
        "hc_sinkhorn_iters": 20,
        "head_dim": HEAD_DIM,
        "hidden_act": "silu",
        "hidden_size": spec.hidden,
        "index_head_dim": INDEX_HEAD_DIM,
        "index_n_heads": spec.index_heads,
        "index_topk": 512,
        "initializer_range": 0.02,
        "max_position_embeddings": 1048576,
        "moe_intermediate_size": spec.moe_inter,
        "n_routed_experts": spec.experts,
        "n_shared_experts": 1,
        "norm_topk_prob": True,
        "num_attention_heads": spec.heads,
        "num_experts_per_tok": spec.topk,
        "num_hash_layers": spec.hash_layers,
        "num_hidden_layers": spec.layers,
        "num_key_value_heads": 1,
        "num_nextn_predict_layers": spec.draft_layers,
        "o_groups": spec.o_groups,
        "o_lora_rank": spec.o_lora_rank,
        "q_lora_rank": spec.q_lora_rank,
        "qk_rope_head_dim": ROPE_DIM,
        "quantization_config": {
            "activation_scheme": "dynamic",
            "fmt": "e4m3",
            "quant_method": "fp8",
            "scale_fmt": "ue8m0",
            "weight_block_size": [BLOCK, BLOCK],
        },
        "rms_norm_eps": 1e-6,
        "rope_scaling": {
            "beta_fast": 32,
            "beta_slow": 1,
            "factor": 16,
            "original_max_position_embeddings": 65536,
            "type": "yarn",
        },
        "rope_theta": 10000,
        "routed_scaling_factor": 1.5,
        "scoring_func": "sqrtsoftplus",
        "sliding_window": 128,
        "swiglu_limit": 10.0,
        "tie_word_embeddings": False,
        "topk_method": "noaux_tc",
        "torch_dtype": "bfloat16",
        "transformers_version": "4.57.1",
        "use_cache": True,
        "vocab_size": spec.vocab,
    }


# ------------------------------------------------------------------------------------------
# Values


def _generator(seed: int, name: str):
    import torch

    g = torch.Generator()
    g.manual_seed((seed * 1_000_003) ^ zlib.crc32(name.encode()))
    return g


def _weight_like(shape, g, fan_in: int):
    """Gaussian / sqrt(fan_in), rows scaled log-normally (sigma 0.2), 0.01% outliers x4.

    Close to Gaussian on purpose: the reference measurements on the real weights (dense INT8
    block about 40 dB, INT4 absmax about 20 dB) are what Gaussian-like weights give; heavier
    tails would make every quality number here pessimistic rather than realistic.
    """
    import torch

    x = torch.randn(shape, generator=g) / math.sqrt(fan_in)
    if len(shape) == 2:
        x *= torch.exp(0.2 * torch.randn(shape[0], 1, generator=g))
    outliers = torch.rand(shape, generator=g) < 1e-4
    return torch.where(outliers, x * 4, x)


def make_tensor(spec: TensorSpec, seed: int, config: dict) -> dict:
    """The tensors (one, or a weight + scale pair) for one inventory entry, as torch tensors."""
    import torch

    from .formats import fp8_block_quantize, mxfp4_quantize

    name, shape = spec.name, spec.shape
    g = _generator(seed, name.rsplit(".", 1)[0] if spec.role in (EXPERT, DENSE) else name)
    if spec.role == EXPERT:
        n, k = shape[0], shape[1] * 2
        packed, scale = mxfp4_quantize(_weight_like((n, k), g, k), name)
        return {name: packed.view(torch.int8), name[: -len("weight")] + "scale": scale}
    if spec.role == DENSE:
        w, s = fp8_block_quantize(_weight_like(shape, g, shape[1]))
        return {name: w, name[: -len("weight")] + "scale": s}
    leaf = name.rsplit(".", 1)[-1]
    if spec.dtype == "I64":  # tid2eid: each token's fixed set of distinct experts
        ids = torch.rand(shape[0], config["n_routed_experts"], generator=g).argsort(dim=1)[:, : shape[1]]
        return {name: ids.to(torch.int64).contiguous()}
    dtype = {"BF16": torch.bfloat16, "F32": torch.float32}[spec.dtype]
    if name.endswith("norm.weight"):
        t = 1.0 + 0.1 * torch.randn(shape, generator=g)
    elif leaf.endswith("_scale"):          # hc_*_scale: positive gains
        t = 0.5 + torch.rand(shape, generator=g)
    elif leaf.endswith("_base") or leaf == "attn_sink":
        t = torch.randn(shape, generator=g)
    elif leaf in ("ape", "bias") or leaf.endswith("_fn"):
        t = 0.02 * torch.randn(shape, generator=g)
    else:                                  # BF16 matrices: embeddings, head, gate, compressors
        t = _weight_like(shape, g, shape[-1])
    return {name: t.to(dtype)}


# ------------------------------------------------------------------------------------------
# Tokenizer (byte-level BPE without merges: every byte is a token)


def _byte_alphabet() -> list[str]:
    """A printable stand-in character for each byte value, as byte-level BPE tokenizers use."""
    keep = [b for b in range(256) if (33 <= b <= 126) or (161 <= b <= 172) or (174 <= b <= 255)]
    table, extra = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return [table[b] for b in range(256)]


def tokenizer_files() -> dict[str, dict]:
    """``tokenizer.json`` and ``tokenizer_config.json``: byte-level BPE without merges, BOS/EOS/PAD
    and the chat tokens as added tokens (ids in the module's id layout, see ``TOKENIZER_IDS``)."""
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for ch in _byte_alphabet():
        vocab[ch] = len(vocab)
    for tok in CHAT_TOKENS:
        vocab[tok] = len(vocab)
    # BOS/EOS/PAD are special (dropped by skip_special_tokens); the chat tokens are not, as DeepSeek's
    # R1 tokenizers mark their role and think tokens, so `<think>`/`</think>` survive into decoded text.
    added = [
        {
            "id": vocab[t],
            "content": t,
            "single_word": False,
            "lstrip": False,
            "rstrip": False,
            "normalized": False,
            "special": t in SPECIAL_TOKENS,
        }
        for t in SPECIAL_TOKENS + CHAT_TOKENS
    ]
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
    tokenizer = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": None,
        "pre_tokenizer": byte_level,
        "post_processor": None,
        "decoder": byte_level,
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
                  "ignore_merges": False, "vocab": vocab, "merges": []},
    }
    # For transformers' apply_chat_template; SGLang renders DeepSeek-V4 chats with deepseek-recipe
    # instead (see CHAT_TOKENS) and this template follows its layout: system text after BOS,
    # history answers after `</think>` (their reasoning dropped), and the generation prompt opening
    # with `<think>` when the ``thinking`` template argument is true, `</think>` otherwise. Without
    # thinking the ids equal SGLang's; with it SGLang also puts a reasoning-effort text after BOS.
    chat_template = (
        "{{ bos_token }}{% for m in messages %}"
        f"{{% if m['role'] == 'user' %}}{USER}{{{{ m['content'] }}}}"
        f"{{% elif m['role'] == 'assistant' %}}{ASSISTANT}{THINK_END}{{{{ m['content'] }}}}{{{{ eos_token }}}}"
        "{% else %}{{ m['content'] }}{% endif %}{% endfor %}"
        f"{{% if add_generation_prompt %}}{ASSISTANT}{{% if thinking %}}{THINK_START}{{% else %}}{THINK_END}"
        "{% endif %}{% endif %}"
    )
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": BOS,
        "eos_token": EOS,
        "pad_token": PAD,
        "add_bos_token": True,
        "add_eos_token": False,
        "model_max_length": 1048576,
        "clean_up_tokenization_spaces": False,
        "chat_template": chat_template,
    }
    return {"tokenizer.json": tokenizer, "tokenizer_config.json": config}


# ------------------------------------------------------------------------------------------
# Writing


def plan_shards(inventory: dict[str, TensorSpec], shards: int) -> list[list[TensorSpec]]:
    """Split the inventory into ``shards`` groups of about equal bytes, never splitting a
    weight from its scale (a pair is listed once, under its ``.weight``)."""
    from .inventory import PRESERVED

    items = [s for s in inventory.values() if s.role == PRESERVED or s.name.endswith(".weight")]
    sizes = [math.prod(s.shape) for s in items]
    total, target = sum(sizes), sum(sizes) / max(shards, 1)
    groups: list[list[TensorSpec]] = [[]]
    acc = 0.0
    for spec, size in zip(items, sizes):
        if acc >= target * len(groups) and len(groups) < shards:
            groups.append([])
        groups[-1].append(spec)
        acc += size
    del total
    return [g for g in groups if g]


def write_checkpoint(
    out: Path, spec: SynthSpec, seed: int = 0, shards: int = 4, overwrite: bool = False, progress: bool = True
) -> Path:
    """Write the synthetic native checkpoint to ``out`` (atomically) and return it."""
    import torch  # noqa: F401 - fail early with a clear import error
    from safetensors.torch import save_file
    from tqdm import tqdm

    spec.validate()
    out = Path(out)
    if out.exists() and any(out.iterdir()) if out.is_dir() else out.exists():
        if not overwrite:
            raise FileExistsError(f"{out} already exists and is not empty; pass --overwrite to replace it")
    config = make_config(spec)
    inventory = native_inventory(config)
    groups = plan_shards(inventory, shards)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        weight_map, total = {}, 0
        bar = tqdm(total=len(inventory), unit="tensor", desc="synth", disable=not progress, file=sys.stderr)
        for i, group in enumerate(groups):
            fname = f"model-{i + 1:05d}-of-{len(groups):05d}.safetensors"
            tensors = {}
            for s in group:
                made = make_tensor(s, seed, config)
                tensors.update(made)
                bar.update(len(made))
            for name, t in tensors.items():
                weight_map[name] = fname
                total += t.numel() * t.element_size()
            save_file(tensors, str(tmp / fname), metadata={"format": "pt"})
        bar.close()
        _write_json(
            tmp / "model.safetensors.index.json",
            {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))},
        )
        _write_json(tmp / "config.json", config)
        _write_json(
            tmp / "generation_config.json",
            {"bos_token_id": 0, "eos_token_id": 1, "do_sample": True, "temperature": 1.0, "top_p": 0.95},
        )
        for fname, content in tokenizer_files().items():
            _write_json(tmp / fname, content)
        _write_json(tmp / "synth.json", {"generator": "sglang-ampere synth", "seed": seed, "spec": asdict(spec)})
        _publishable(tmp)
        if out.exists():
            shutil.rmtree(out) if out.is_dir() else out.unlink()
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _publishable(folder: Path) -> None:
    """mkdtemp makes a private (0700) folder; give it and its files the usual umask modes."""
    umask = os.umask(0)
    os.umask(umask)
    folder.chmod(0o777 & ~umask)
    for f in folder.iterdir():
        f.chmod(0o666 & ~umask)


def _write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
