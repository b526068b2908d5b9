"""``sglang-ampere synth OUT``: a small native-format DeepSeek-V4-Flash checkpoint (:mod:`sglang_ampere.synth`)."""

from __future__ import annotations

import argparse
import sys
from dataclasses import asdict
from pathlib import Path

from ..synth import REAL, TOKENIZER_IDS, VARIANTS, SynthSpec, write_checkpoint

#: The size flags; each help line ends with the release's value (REAL) and the small default.
_FLAGS = {
    "layers": "main decoder layers (ratios follow the release: 0,0 then 4/128 alternating)",
    "experts": "routed experts per layer",
    "topk": "experts per token",
    "hidden": "hidden size, multiple of 128",
    "moe_inter": "expert and shared-expert width, multiple of 128",
    "heads": "attention heads (head dim is fixed at 512)",
    "q_lora_rank": "query LoRA rank, multiple of 128",
    "o_groups": "output projection groups",
    "o_lora_rank": "output LoRA rank, multiple of 128",
    "index_heads": "indexer heads (indexer head dim fixed at 128)",
    "vocab": f"vocabulary size (the tokenizer uses the first {TOKENIZER_IDS} ids)",
    "hash_layers": "leading layers routed by tid2eid",
    "mtp": "MTP (next-n) layers, 0 or 1 (--variant v4-flash only)",
    "dspark_stages": "DSpark drafter blocks = target layers feeding it (--variant 0731)",
    "dspark_experts": "routed experts per DSpark block (--variant 0731; dspark_n_routed_experts)",
    "dspark_markov_rank": "DSpark Markov head rank (--variant 0731; dspark_markov_rank)",
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.description = (
        "Write a native-format DeepSeek-V4-Flash checkpoint (MXFP4 experts, FP8 dense, real tensor "
        "names and config keys) at small sizes, for tests and demos. --real gives the release's sizes "
        "(about 160 GB: use the size flags to write a part of it)."
    )
    p.add_argument("out", type=Path, help="output folder (must not exist or be empty, unless --overwrite)")
    p.add_argument("--seed", type=int, default=0, help="seed; the same seed gives the same bytes (default 0)")
    p.add_argument("--shards", type=int, default=4, help="number of safetensors shards (default 4)")
    p.add_argument("--real", action="store_true", help="start from the release's sizes instead of the small defaults")
    p.add_argument("--variant", choices=VARIANTS, default="v4-flash",
                   help="v4-flash: the V4-Flash layout (MTP block, default); 0731: V4-Flash-0731 "
                        "(DSpark drafter with a Markov head under mtp.*)")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    for field, help_ in _FLAGS.items():
        p.add_argument(
            "--" + field.replace("_", "-"),
            type=int,
            default=None,
            help=f"{help_}; real {getattr(REAL, field)}, default {getattr(SynthSpec(), field)}",
        )


def spec_from_args(args: argparse.Namespace) -> SynthSpec:
    base = asdict(REAL if args.real else SynthSpec())
    base.update({f: getattr(args, f) for f in _FLAGS if getattr(args, f) is not None})
    base["variant"] = args.variant
    return SynthSpec(**base)


def run(args: argparse.Namespace) -> int:
    try:
        spec = spec_from_args(args)
        out = write_checkpoint(
            args.out, spec, seed=args.seed, shards=args.shards, overwrite=args.overwrite, progress=not args.quiet
        )
    except (ValueError, FileExistsError) as e:
        print(f"sglang-ampere synth: error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {out}")
    return 0
