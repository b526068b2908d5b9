"""Small synthetic checkpoints for the reference-forward tests (native and converted)."""

from __future__ import annotations

import json
from pathlib import Path

from sglang_ampere.synth import SynthSpec, write_checkpoint

#: 4 layers: ratios 0, 0, 4 (CSA + indexer), 128 (HCA), then MTP. Window and index top-k are
#: lowered so that 300 tokens leave the window, cross compressor boundaries and make the
#: indexer choose 3 of up to 75 entries.
TINY = dict(layers=4, experts=4, topk=2, hidden=128, moe_inter=128, heads=2, q_lora_rank=128, o_groups=1,
            o_lora_rank=128, index_heads=2, vocab=300, hash_layers=1, mtp=1)
WINDOW, INDEX_TOPK = 16, 3


def tiny_native(root: Path, seed: int, **kw) -> Path:
    out = write_checkpoint(Path(root) / "native", SynthSpec(**{**TINY, **kw}), seed=seed, shards=2, progress=False)
    cfg_path = out / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["sliding_window"], cfg["index_topk"] = WINDOW, INDEX_TOPK
    cfg_path.write_text(json.dumps(cfg, indent=2))
    return out


def tiny_checkpoint(tmp_path_factory, name: str) -> tuple[Path, int, Path]:
    """``(folder, seed, native checkpoint)``: a fresh seed and :func:`tiny_native` written with it
    in a new temporary folder ``name``."""
    from .convert import fresh_seed

    root = tmp_path_factory.mktemp(name)
    seed = fresh_seed()
    return root, seed, tiny_native(root, seed)


def tiny_ids(seed: int, n: int):
    """``n`` token ids of the :data:`TINY` vocabulary drawn from ``seed`` (a torch tensor)."""
    import torch

    return torch.randint(0, TINY["vocab"], (n,), generator=torch.Generator().manual_seed(seed))


def converted(native: Path, out: Path, **options) -> Path:
    from sglang_ampere.convert.engine import convert
    from sglang_ampere.convert.options import Options

    convert(native, out, Options(**options), progress=False, log=lambda m: None)
    return out
