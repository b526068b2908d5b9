"""``sglang-ampere quickstart [DIR]``: the whole converter path on a small synthetic model.

1. ``DIR/native``: a native-format DeepSeek-V4-Flash checkpoint (``synth``, small sizes);
2. ``DIR/dsv4_int``: ``convert`` into the INT4/INT8 format Ampere GPUs serve;
3. ``audit --against``: counts, config and SNR per class;
then it prints where the checkpoint is and the command to run next. Re-running reuses what is
already there (the conversion resumes). Never imports SGLang.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

DEFAULT_DIR = Path("sglang-ampere-quickstart")


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
        out(f"[1/3] synth: reusing {native}")
    else:
        out(f"[1/3] synth: writing a small native-format DeepSeek-V4-Flash checkpoint to {native}")
        write_checkpoint(native, SynthSpec(), seed=seed, overwrite=native.exists(), progress=progress)
    out(f"[2/3] convert: {native} -> {converted}")
    summary = convert(native, converted, Options(), progress=progress)
    out(describe(summary))
    out(f"[3/3] audit: {converted} --against {native}")
    report, problems = audit(converted, native, sample=0)
    out(format_report(report, problems))
    if problems:
        out("quickstart: the audit found problems (listed above)")
        return 1
    out("")
    out(f"dsv4_int checkpoint: {converted.resolve()}")
    out("next: see how it would be served on an RTX 3090-class GPU (sm_86):")
    out(f"  {next_command(converted.resolve())}")
    out("then convert the real model the same way:")
    out("  sglang-ampere audit /path/to/DeepSeek-V4-Flash            # the plan, from headers, in seconds")
    out("  sglang-ampere convert /path/to/DeepSeek-V4-Flash /path/to/DeepSeek-V4-Flash-dsv4_int --workers 2")
    return 0


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
