"""Helpers for the converter tests: synthetic checkpoints, shard surgery, running the CLI."""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

from safetensors.torch import load_file, save_file

from sglang_ampere.synth import SynthSpec, write_checkpoint

from . import PY, REPO

__all__ = ["PY", "REPO", "SMALL", "cli", "copy_ckpt", "files_of", "first_name", "fresh_seed", "make_native",
           "mutate_shard", "run_cli", "shard_of"]

#: Small but odd-ish: 3 layers (SWA, SWA, CSA), 5 experts, MTP, 3 shards.
SMALL = dict(layers=3, experts=5, topk=2, hidden=256, moe_inter=384, heads=4, q_lora_rank=256,
             o_groups=2, o_lora_rank=128, index_heads=4, vocab=300, hash_layers=1, mtp=1)


def fresh_seed() -> int:
    s = int(os.environ.get("SGLANG_AMPERE_TEST_SEED", random.SystemRandom().randrange(2**31)))
    print(f"seed={s}", file=sys.stderr)
    return s


def make_native(root: Path, seed: int, shards: int = 3, **kw) -> Path:
    spec = SynthSpec(**{**SMALL, **kw})
    return write_checkpoint(Path(root) / "native", spec, seed=seed, shards=shards, progress=False)


def copy_ckpt(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def shard_of(ckpt: Path, name: str) -> Path:
    wm = json.loads((ckpt / "model.safetensors.index.json").read_text())["weight_map"]
    return ckpt / wm[name]


def first_name(ckpt: Path, pred) -> str:
    wm = json.loads((ckpt / "model.safetensors.index.json").read_text())["weight_map"]
    return next(n for n in sorted(wm) if pred(n))


def mutate_shard(path: Path, fn) -> None:
    """Load a shard, let ``fn(dict)`` change it, write it back (safetensors keeps e8m0/e4m3)."""
    tensors = load_file(str(path))
    fn(tensors)
    save_file(tensors, str(path), metadata={"format": "pt"})


def run_cli(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([PY, "-m", "sglang_ampere", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=str(REPO))


def cli(*args: str) -> int:
    """Run the console script in-process (fast); returns its exit code."""
    from sglang_ampere.cli import main

    return main([str(a) for a in args])


def files_of(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(Path(folder).iterdir()) if p.is_file()}

