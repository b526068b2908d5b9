"""128x128 block scales: shapes and expansion, shared by FP8 (native) and INT8 (dsv4_int)."""

from __future__ import annotations

import torch

from .constants import BLOCK
from .errors import FormatError


def block_scale_shape(n: int, k: int, block: int = BLOCK) -> tuple[int, int]:
    """Scale grid of an ``[n, k]`` weight: ``[ceil(n/block), ceil(k/block)]``."""
    return (-(-n // block), -(-k // block))


def check_block_scale(weight: torch.Tensor, scale: torch.Tensor, name: str | None, block: int = BLOCK) -> None:
    if weight.dim() != 2:
        raise FormatError(name, f"block-scaled weight must be 2-D, got shape {tuple(weight.shape)}")
    want = block_scale_shape(*weight.shape, block=block)
    if tuple(scale.shape) != want:
        raise FormatError(
            name, f"block scale shape {tuple(scale.shape)} does not fit weight {tuple(weight.shape)} (expected {want})"
        )


def expand_block_scale(scale: torch.Tensor, n: int, k: int, block: int = BLOCK) -> torch.Tensor:
    """``[ceil(n/b), ceil(k/b)]`` -> ``[n, k]``: every element gets its block's scale."""
    full = scale.repeat_interleave(block, dim=0).repeat_interleave(block, dim=1)
    return full[:n, :k]


def block_view(x: torch.Tensor, block: int = BLOCK) -> tuple[torch.Tensor, tuple[int, int]]:
    """Zero-pad ``[n, k]`` to whole blocks and view it as ``[nb, block, kb, block]``."""
    n, k = x.shape
    nb, kb = block_scale_shape(n, k, block)
    if (nb * block, kb * block) != (n, k):
        x = torch.nn.functional.pad(x, (0, kb * block - k, 0, nb * block - n))
    return x.reshape(nb, block, kb, block), (n, k)


def block_absmax(x: torch.Tensor, block: int = BLOCK) -> torch.Tensor:
    """Absolute maximum of each 128x128 block (padding counts as zero): ``[nb, kb]``."""
    v, _ = block_view(x, block)
    return v.abs().amax(dim=(1, 3))
