"""``sglang-ampere quickstart [DIR]``: the whole converter path on a small synthetic model.

1. ``DIR/native``: a native-format DeepSeek-V4-Flash checkpoint (``synth``, small sizes);
2. ``DIR/dsv4_int``: ``convert`` into the INT4/INT8 format Ampere GPUs serve;
3. ``audit --against``: counts, config and SNR per class;
4. ``eval --against``: the reference forward of both checkpoints over a fixed token sequence
   (KL, top-1 agreement, perplexity, per-layer hidden SNR; figures of a random-weight model);
then it prints where the checkpoint is and the command to run next. Re-running reuses what is
already there (the conversion resumes). Never imports SGLang.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

DEFAULT_DIR = Path("sglang-ampere-quickstart")
#: Tokens the quickstart's eval runs over (seeded, so every run measures the same sequence).
EVAL_TOKENS = 128


def next_command(model_path: Path) -> str:
    """The launcher's dry-run command for the checkpoint (plain command line if the launcher is absent)."""
    try:
        from .launch import dry_run_command
    except ImportError:
        return f"sglang-ampere launch --gpu sm86 --model-path {model_path} --dry-run"
    return dry_run_command(model_path, gpu="sm86").strip()


def quickstart(root: Path, seed: int = 0, progress: bool = True, out=print) -> int:
    from .convert.audit import audit, format_report
    from .convert.engine import convert, describe
    from .convert.options import Options
    from .synth import SynthSpec, write_checkpoint

    root = Path(root)
    native, converted = root / "native", root / "dsv4_int"
    if (native / "synth.json").is_file():
        out(f"[1/4] synth: reusing {native}")
    else:
        out(f"[1/4] synth: writing a small native-format DeepSeek-V4-Flash checkpoint to {native}")
        write_checkpoint(native, SynthSpec(), seed=seed, overwrite=native.exists(), progress=progress)
    out(f"[2/4] convert: {native} -> {converted}")
    summary = convert(native, converted, Options(), progress=progress)
    out(describe(summary))
    out(f"[3/4] audit: {converted} --against {native}")
    report, problems = audit(converted, native, sample=0)
    out(format_report(report, problems))
    if problems:
        out("quickstart: the audit found problems (listed above)")
        return 1
    out(f"[4/4] eval: {converted} --against {native} ({EVAL_TOKENS} seeded tokens, synthetic random weights)")
    out(eval_figures(converted, native, seed, progress))
    out("")
    out(f"dsv4_int checkpoint: {converted.resolve()}")
    out("next: see how it would be served on an RTX 3090-class GPU (sm_86):")
    out(f"  {next_command(converted.resolve())}")
    out("or serve the native checkpoint as it is, without conversion (README: 'dsv4_int or native: which to choose'):")
    out(f"  {next_command(native.resolve())}")
    out("then convert the real model the same way:")
    out("  sglang-ampere audit /path/to/DeepSeek-V4-Flash            # the plan, from headers, in seconds")
    out("  sglang-ampere convert /path/to/DeepSeek-V4-Flash /path/to/DeepSeek-V4-Flash-dsv4_int --workers 2")
    return 0


def eval_figures(converted: Path, native: Path, seed: int = 0, progress: bool = False) -> str:
    """The reference forward's KL / top-1 / perplexity of the conversion against its source."""
    import torch

    from .reference.eval import evaluate, format_report
    from .reference.weights import Checkpoint

    vocab = Checkpoint(native).config["vocab_size"]
    ids = torch.randint(0, vocab, (EVAL_TOKENS,), generator=torch.Generator().manual_seed(seed)).tolist()
    r = evaluate(converted, ids, native, decode=4, progress=progress)
    r.pop("_logits")
    return format_report(r)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.description = ("synth -> convert -> audit on a small synthetic DeepSeek-V4-Flash, then print where the "
                     "dsv4_int checkpoint is and what to run next.")
    p.add_argument("dir", type=Path, nargs="?", default=DEFAULT_DIR,
                   help=f"working folder (default ./{DEFAULT_DIR}); holds native/ and dsv4_int/")
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic weights (default 0)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    from .convert.headers import CheckpointError
    from .convert.manifest import ManifestError

    try:
        return quickstart(args.dir, seed=args.seed, progress=not args.quiet)
    except (CheckpointError, ManifestError, ValueError, FileExistsError) as e:
        print(f"sglang-ampere quickstart: error: {e}", file=sys.stderr)
        return 2
