"""DeepSeek-V4's C4 indexer logits on GPUs below sm_90: bounded memory, or the TileLang kernel.

Target:   ``sglang.srt.layers.attention.dsv4.indexer.fp8_paged_mqa_logits_torch`` (``IDX`` below)
          and ``sglang.srt.layers.attention.deepseek_v4_backend.DeepseekV4AttnBackend.__init__``
Hook:     AROUND, both; on sm_90 and newer each one calls the original unchanged, unless
          ``SGLANG_AMPERE_TARGET=ampere`` (``dsv4_attention.needs_ampere_path`` decides for both).
Why:      Below sm_90 DeepGEMM's paged MQA logits cannot run, so the preset sets
          ``SGLANG_FP8_PAGED_MQA_LOGITS_TORCH=1`` and every ratio-4 layer scores its index keys
          with SGLang's ``fp8_paged_mqa_logits_torch``. That function gathers every row's whole
          page table and holds about 57 KB per row per page: +5.3 GB for one 4096-token prompt,
          more than a 24 GB card has outside its static pool. ``forward_c4_indexer`` looks the
          function up as a module global at call time, so replacing it there reroutes every call
          (prefill, decode, CUDA-graph capture) to :mod:`sglang_ampere.kernels.indexer`:
          ``SGLANG_AMPERE_INDEXER_BACKEND=tilelang`` (default; launcher ``--nsa-indexer-backend``)
          runs the TileLang kernel, ``torch`` the chunked torch path that stays within
          ``SGLANG_AMPERE_INDEXER_BUDGET_MB``. Both return what SGLang's function returns (same
          shape, dtype and zeros past each row's length), so the top-k stage after it
          (``topk_transform_paged``) reads the same tensor.
          The ``__init__`` hook runs the original, then, below sm_90, checks that the indexer
          really takes the torch-function branch (``SGLANG_FP8_PAGED_MQA_LOGITS_TORCH=1`` and
          ``SGLANG_OPT_USE_TILELANG_INDEXER=0``; otherwise it would reach DeepGEMM or an FP8
          TileLang GEMM that sm_86 cannot run) and builds the TileLang indexer kernels before
          CUDA-graph capture.
SGLang:   written for 0.5.23 (``indexer.py`` ``fp8_paged_mqa_logits_torch`` at line ~82, looked up
          in ``forward_c4_indexer`` at ~872 and called at ~1089 with positional arguments).
"""

from __future__ import annotations

import functools
import logging

from sglang_ampere import envvars

from . import Hook
from .dsv4_attention import BE, needs_ampere_path, precompile_kernels

logger = logging.getLogger("sglang_ampere.patches.dsv4_indexer")

IDX = "sglang.srt.layers.attention.dsv4.indexer"


def chosen_backend() -> str:
    """``torch`` | ``tilelang`` from ``SGLANG_AMPERE_INDEXER_BACKEND`` (validated)."""
    return envvars.get(envvars.INDEXER_BACKEND)


def indexer_impl(name: str):
    """The implementation of the indexer logits with this name."""
    from sglang_ampere.kernels import indexer

    try:
        return indexer.IMPLEMENTATIONS[name]
    except KeyError:
        raise ValueError(f"unknown indexer backend {name!r}; use one of "
                         f"{', '.join(indexer.IMPLEMENTATIONS)}") from None


def paged_mqa_logits_hook(original, *args, **kwargs):
    """``fp8_paged_mqa_logits_torch(q_fp8, kvcache_fp8, weight, seq_lens, page_table, meta, max_seq_len, clean)``."""
    if not needs_ampere_path():
        return original(*args, **kwargs)
    return indexer_impl(chosen_backend())(*args, **kwargs)


def check_indexer_branch() -> None:
    """Below sm_90: refuse settings that send ``forward_c4_indexer`` past our function."""
    from sglang.srt.environ import envs

    if envs.SGLANG_OPT_USE_TILELANG_INDEXER.get():
        raise RuntimeError(
            "SGLANG_OPT_USE_TILELANG_INDEXER=1 selects SGLang's FP8 x FP8 TileLang indexer, which needs "
            "FP8 tensor cores (sm_89+); unset it (the sm80/sm86 presets set 0). sglang-ampere's own "
            "indexer kernel is chosen with SGLANG_AMPERE_INDEXER_BACKEND=tilelang.")
    if not envs.SGLANG_FP8_PAGED_MQA_LOGITS_TORCH.get():
        raise RuntimeError(
            "below sm_90 the DeepSeek-V4 indexer needs SGLANG_FP8_PAGED_MQA_LOGITS_TORCH=1 (set by the "
            "sm80/sm86 presets; `sglang-ampere launch` applies them): without it SGLang calls DeepGEMM, "
            "which has no sm_80/sm_86 kernels. sglang-ampere replaces that torch function with its "
            "bounded-memory path or TileLang kernel.")


@functools.lru_cache(maxsize=1)
def precompile_tilelang() -> int:
    """Build every TileLang indexer kernel serving uses, once per process, before graph capture."""
    from sglang_ampere.kernels import tilelang_indexer

    return precompile_kernels(
        tilelang_indexer, "indexer kernels", "Check nvcc and CUDA_HOME with `sglang-ampere doctor`, or run the "
        f"indexer on the bounded torch path: {envvars.INDEXER_BACKEND}=torch", logger.info)


def backend_init_hook(original, self, *args, **kwargs):
    result = original(self, *args, **kwargs)
    if needs_ampere_path():
        check_indexer_branch()
        if chosen_backend() == "tilelang":
            precompile_tilelang()
    return result


def hooks() -> list[Hook]:
    return [
        Hook(f"{IDX}.fp8_paged_mqa_logits_torch", paged_mqa_logits_hook, "AROUND",
             "below sm_90 score index keys in bounded memory (torch) or with the TileLang kernel"),
        Hook(f"{BE}.DeepseekV4AttnBackend.__init__", backend_init_hook, "AROUND",
             "below sm_90 check the indexer reaches our function and build its TileLang kernels before capture"),
    ]
