"""Environment variables this package reads: the one table of their names and meanings.

The launcher writes them (from ``--nsa-*-backend`` and presets); the plugin, the patches and
the kernels read them through :func:`get`. SGLang's own variables are not listed here.
"""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class EnvVar:
    name: str
    default: str
    choices: tuple[str, ...] | None
    help: str


_VARS = (
    EnvVar("SGLANG_AMPERE_PREFILL_BACKEND", "tilelang", ("torch", "tilelang"),
           "sparse-MLA implementation for prefill on GPUs below sm_90 (launcher: --nsa-prefill-backend)"),
    EnvVar("SGLANG_AMPERE_DECODE_BACKEND", "tilelang", ("torch", "tilelang"),
           "sparse-MLA implementation for decode on GPUs below sm_90 (launcher: --nsa-decode-backend)"),
    EnvVar("SGLANG_AMPERE_TORCH_MLA_BUDGET_MB", "256", None,
           "largest intermediate (MB) the torch sparse-MLA fallback may allocate per chunk"),
    EnvVar("SGLANG_AMPERE_INDEXER_BACKEND", "tilelang", ("torch", "tilelang"),
           "C4 indexer logits (paged MQA) on GPUs below sm_90 (launcher: --nsa-indexer-backend)"),
    EnvVar("SGLANG_AMPERE_INDEXER_BUDGET_MB", "256", None,
           "largest intermediate (MB) the torch indexer-logits path may allocate per chunk"),
    EnvVar("SGLANG_AMPERE_MOE_BACKEND", "marlin", ("marlin", "triton"),
           "INT4 routed-expert kernel on CUDA: Marlin MoE (repacked at load) or SGLang's Triton WNA16 MoE"),
    EnvVar("SGLANG_AMPERE_ALLOW_ANY_SGLANG", "0", ("0", "1"),
           "1 = start even if the installed SGLang is not the pinned release (unsupported)"),
)

VARS: dict[str, EnvVar] = {v.name: v for v in _VARS}


def get(name: str) -> str:
    """The variable's value (or its default), validated against its choices."""
    var = VARS[name]
    value = os.environ.get(name, var.default).strip()
    if var.choices is not None and value not in var.choices:
        raise ValueError(f"{name}={value!r} is not one of {', '.join(var.choices)}")
    return value
