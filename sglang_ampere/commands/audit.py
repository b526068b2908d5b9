"""``sglang-ampere audit PATH``: check a native or dsv4_int checkpoint (:mod:`sglang_ampere.convert.audit`)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..convert.audit import audit, format_report


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.description = (
        "Audit a checkpoint. Native: print the conversion plan from the shard headers alone (seconds, no "
        "tensor data read). dsv4_int: count tensors per class, check scales, dtypes, index and config; "
        "with --against SRC also measure SNR per class against the native source. Exit 1 if there are problems."
    )
    p.add_argument("path", type=Path, help="checkpoint folder (native or dsv4_int)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--against", type=Path, default=None, metavar="SRC",
                   help="native checkpoint PATH was converted from: adds SNR per class")
    p.add_argument("--verify", action="store_true",
                   help="dsv4_int: re-hash every shard against the SHA-256 recorded by convert (reads all data)")
    p.add_argument("--sample", type=int, default=64,
                   help="with --against: tensors per class to compare (evenly spread; 0 = all; default 64)")


def run(args: argparse.Namespace) -> int:
    report, problems = audit(args.path, args.against, args.sample, args.verify)
    if args.json:
        print(json.dumps({**report, "problems": problems, "ok": not problems}, indent=2,
                         default=lambda x: None))
    else:
        print(format_report(report, problems))
    return 1 if problems else 0
