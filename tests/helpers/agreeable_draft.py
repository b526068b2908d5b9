"""A synthetic native checkpoint whose MTP draft often agrees with the target (test-only).

With ``synth``'s random weights the MTP block's drafts are never accepted (measured: 0 of 21 per
request), so a speculative-decoding test would never take the accept path (KV slots of accepted
drafts kept, the next draft built from an accepted token). :func:`make_agreeable` rewrites a
``synth`` native checkpoint in place so that

* the target is close to a bigram model: every layer's attention output projection (``wo_b``) and
  expert down projections (``w2``, routed and shared) are scaled by ``2**-shift`` through their
  E8M0 block scales, so the residual stream stays dominated by the token's embedding, while the
  context (attention over the KV cache) still moves some predictions;
* the draft is exactly that bigram: ``h_proj`` = 0 (no target hidden state), ``e_proj`` =
  identity, ``enorm`` = 1, the MTP layer's ``wo_b`` and ``w2`` = 0 (its streams stay copies of one
  vector, which the hc head only scales), and its final norm = the target's. The draft's logits are
  then the target's logits for the same token with the layers removed.

So drafts are accepted where the context does not move the target's argmax, and rejected where it
does: both paths run, and the target's tokens still depend on its KV cache.
"""

from __future__ import annotations

import glob
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

E8M0_ONE = 127          # the E8M0 byte of 2**0


def _e8m0_shift(scale: torch.Tensor, shift: int) -> torch.Tensor:
    raw = scale.view(torch.uint8).to(torch.int16)
    if int(raw.min()) < shift:
        raise ValueError("E8M0 scale too small to shift")
    return (raw - shift).to(torch.uint8).view(torch.float8_e8m0fnu)


def make_agreeable(native_dir: str | Path, shift: int = 3) -> int:
    """Rewrite ``native_dir`` (a ``synth`` native checkpoint) in place; returns tensors changed."""
    files = sorted(glob.glob(str(Path(native_dir) / "*.safetensors")))
    tensors: dict[str, dict[str, torch.Tensor]] = {}
    for f in files:
        with safe_open(f, "pt") as s:
            tensors[f] = {k: s.get_tensor(k) for k in s.keys()}
    everything = {k: v for t in tensors.values() for k, v in t.items()}
    if "mtp.0.e_proj.weight" not in everything:
        raise ValueError(f"{native_dir}: no mtp.0 block")
    changed = 0
    for f, ts in tensors.items():
        for k in list(ts):
            t = ts[k]
            if k.startswith("layers.") and (k.endswith("attn.wo_b.scale") or k.endswith(".w2.scale")):
                ts[k] = _e8m0_shift(t, shift)
            elif k.startswith("mtp.0.") and (k.endswith("attn.wo_b.weight") or k.endswith(".w2.weight")
                                              or k == "mtp.0.h_proj.weight"):
                ts[k] = torch.zeros_like(t)
            elif k == "mtp.0.e_proj.weight":
                ts[k] = torch.eye(t.shape[0], t.shape[1], dtype=torch.float32).to(t.dtype)
            elif k == "mtp.0.e_proj.scale":
                ts[k] = torch.full(t.shape, E8M0_ONE, dtype=torch.uint8).view(t.dtype)
            elif k == "mtp.0.enorm.weight":
                ts[k] = torch.ones_like(t)
            elif k == "mtp.0.norm.weight":
                ts[k] = everything["norm.weight"].clone()
            else:
                continue
            changed += 1
        save_file(ts, f, metadata={"format": "pt"})
    return changed
