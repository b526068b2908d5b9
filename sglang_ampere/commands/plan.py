"""``sglang-ampere plan MODEL --gpus NxMEM``: the memory plan per pipeline stage, from the headers
(:mod:`sglang_ampere.memory_plan` says what it counts and how)."""

from __future__ import annotations

import argparse
import json
import re
import sys

from ..memory_plan import (
    DEFAULT_CHUNKED_PREFILL,
    DEFAULT_SWA_RATIO,
    SPECULATIVE,
    PlanError,
    Settings,
    format_table,
    load_model,
    make_plan,
)


def parse_gpus(text: str) -> tuple[int, float]:
    """``--gpus 12x24``: (GPU count, GiB each)."""
    m = re.fullmatch(r"\s*(\d+)\s*[xX*]\s*(\d+(?:\.\d+)?)\s*(?:G|GB|GiB)?\s*", text)
    if not m or int(m.group(1)) < 1 or float(m.group(2)) <= 0:
        raise PlanError(f"--gpus {text!r}: write COUNTxGIB, e.g. 12x24 (twelve 24 GB cards) or 8x80")
    return int(m.group(1)), float(m.group(2))


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", metavar="MODEL",
                   help="dsv4_int or native FP8/FP4 checkpoint folder (only headers are read)")
    p.add_argument("--gpus", required=True, metavar="NxMEM", help="GPU count and GiB each, e.g. 12x24 or 8x80")
    p.add_argument("--nodes", type=int, default=1, metavar="K", help="nodes the GPUs are spread over (default 1)")
    p.add_argument("--tp-size", type=int, default=1, metavar="T", help="tensor-parallel size; pp = GPUs / T")
    p.add_argument("--context-length", type=int, default=65536, metavar="L")
    p.add_argument("--max-running-requests", type=int, default=16, metavar="C")
    p.add_argument("--chunked-prefill-size", type=int, default=DEFAULT_CHUNKED_PREFILL, metavar="T")
    p.add_argument("--mem-fraction-static", type=float, default=0.85, metavar="F")
    p.add_argument("--swa-full-tokens-ratio", type=float, default=DEFAULT_SWA_RATIO, metavar="R")
    p.add_argument("--speculative", choices=SPECULATIVE, default="none",
                   help="mtp: EAGLE with the checkpoint's MTP layer (its draft on the last stage)")
    p.add_argument("--json", action="store_true", help="print the plan as JSON")


def settings_from_args(args: argparse.Namespace) -> Settings:
    return Settings(context_length=args.context_length, max_running_requests=args.max_running_requests,
                    chunked_prefill_size=args.chunked_prefill_size, mem_fraction_static=args.mem_fraction_static,
                    swa_ratio=args.swa_full_tokens_ratio, speculative=args.speculative)


def run(args: argparse.Namespace) -> int:
    try:
        gpus, mem = parse_gpus(args.gpus)
        model = load_model(args.model)
        plan = make_plan(model, gpus, mem, nodes=args.nodes, tp=args.tp_size, settings=settings_from_args(args))
    except (PlanError, ValueError) as exc:
        print(f"sglang-ampere plan: error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(plan.to_json(), indent=2))
    else:
        sys.stdout.write(format_table(plan))
    return 0
