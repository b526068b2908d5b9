"""``sglang-ampere eval MODEL``: the reference forward's perplexity, KL and top-1 against another
checkpoint, layer SNR (:mod:`sglang_ampere.reference.eval`)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..formats import FormatError
from ..reference.eval import DEFAULT_MAX_TOKENS, DTYPES, evaluate, format_report, load_tokens
from ..reference.weights import ReferenceError
from ..safetensors_io import CheckpointError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.description = (
        "Run the reference DeepSeek-V4-Flash forward over a text or token file and report perplexity; "
        "with --against REF also KL(REF || MODEL), top-1 agreement and per-layer hidden-state SNR."
    )
    p.add_argument("model", type=Path, help="checkpoint folder to measure (dsv4_int or native)")
    p.add_argument(
        "--against", type=Path, default=None, help="reference checkpoint (e.g. the native release MODEL came from)"
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--text", type=Path, help="UTF-8 text, tokenized with MODEL's tokenizer.json")
    src.add_argument("--tokens", type=Path, help="JSON list of token ids")
    p.add_argument(
        "--decode", type=int, default=0, help="score the last N tokens by single-token decode steps (default 0)"
    )
    p.add_argument(
        "--dtype",
        choices=sorted(DTYPES),
        default="bfloat16",
        help="bfloat16 (as served; default) or float32 (the same steps in float32, products accumulated in "
        "float64 so that prefill and decode agree exactly; for comparisons)",
    )
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu, cuda, cuda:1 (default cpu)")
    p.add_argument(
        "--max-tokens",
        type=int,
        default=DEFAULT_MAX_TOKENS,
        help=f"refuse longer inputs (default {DEFAULT_MAX_TOKENS})",
    )
    p.add_argument(
        "--dump-logits", type=Path, default=None, help="write MODEL's logits (safetensors 'logits', float32 [T, vocab])"
    )
    p.add_argument(
        "--in-memory", action="store_true", help="keep every layer's weights resident instead of streaming them"
    )
    p.add_argument("--mtp", action="store_true", help="also run the MTP block (the draft) and compare its predictions")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    try:
        ids = load_tokens(args.text, args.tokens, args.model)
        r = evaluate(
            args.model,
            ids,
            args.against,
            args.decode,
            args.dtype,
            args.device,
            args.max_tokens,
            stream=not args.in_memory,
            progress=not args.quiet,
            mtp=args.mtp,
        )
        logits = r.pop("_logits")
        if args.dump_logits is not None:
            from safetensors.torch import save_file

            args.dump_logits.parent.mkdir(parents=True, exist_ok=True)
            save_file({"logits": logits.float().contiguous()}, str(args.dump_logits))
    except (ReferenceError, CheckpointError, FormatError, OSError) as e:
        print(f"sglang-ampere eval: error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(r, indent=2) if args.json else format_report(r))
    return 0
