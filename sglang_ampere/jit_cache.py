"""SGLang's JIT kernels for our serving paths: which modules each arch and checkpoint format
needs, whether SGLang's JIT cache holds them, and building them ahead of time.

SGLang 0.5.23 compiles its Marlin and DeepSeek-V4 CUDA kernels on first use (nvcc, minutes per
module on a small host), so a first ``launch`` looks hung. :func:`build` compiles them into
SGLang's own JIT cache (``$SGLANG_JIT_CACHE_DIR``, default ``~/.cache/sglang/jit``) through
SGLang's own builders, so the server later finds them by the same build key. No GPU is needed:
the arch is forced with ``sglang.kernels.jit.utils.override_jit_cuda_arch`` (one process per
arch; see ../shared/reference/marlin-jit.md).

Both checkpoint formats run the same Marlin modules: SGLang compiles every weight type into each
(``b_q_type`` and the group size are runtime arguments), so the dsv4_int INT8/INT4 kernels and the
native checkpoint's FP8 dense and MXFP4 (E8M0) MoE kernels come from one ``gptq_marlin`` and two
``moe_wna16_marlin`` builds. The native path adds ``moe_topk_sum``, the final top-k sum
``fused_marlin_moe`` runs for MXFP4 experts.

Speculative decoding with the MTP layer (SGLang's EAGLE) adds two modules a server without it
never builds: ``speculative/tree.cuh`` (draft tree, greedy verify) and ``speculative/sampling.cuh``
(verify at temperature > 0, the OpenAI default; it includes cuRAND's headers). They carry the
``--speculative`` choice that runs them, so that a launch without MTP is not told to build them.

Importing this module is cheap (no torch, no SGLang): ``launch`` and ``doctor`` use
:func:`cold_cache_notes`; the ``warmup`` command (:mod:`sglang_ampere.commands.warmup`) builds.
"""

from __future__ import annotations

import glob
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

from . import envvars
from .checkpoint_format import DSV4_INT, NATIVE
from .gpus import KNOWN_ARCHES, Arch
from .notes import Note, note
from .speculative import CHOICES as SPECULATIVE
from .speculative import MTP

#: The checkpoint formats whose serving path warmup knows.
CHECKPOINTS = (DSV4_INT, NATIVE)


@dataclass(frozen=True)
class JitTarget:
    key: str                 # name for --only and the progress bar
    module: str              # SGLang op module holding the builder
    builder: str             # its (private) builder function
    args: tuple              # builder arguments; "bf16" stands for torch.bfloat16
    cache_glob: str          # module directory name(s) in the JIT cache
    why: str
    est_minutes: float       # rough, 2-core host, sm_86, default flags
    max_arch: int | None = None   # only for archs below this (e.g. 90)
    checkpoints: tuple[str, ...] = CHECKPOINTS   # the formats whose serving path runs it
    speculative: tuple[str, ...] = ()   # the --speculative choices that run it (empty: every server)


#: Cheapest first: the test builds only the first one.
TARGETS: tuple[JitTarget, ...] = (
    JitTarget("gptq_marlin_repack", "sglang.kernels.ops.quantization.gptq_marlin_repack",
              "_jit_gptq_marlin_repack_module", (), "sgl_kernel_jit_gptq_marlin_repack",
              "repacks experts (INT4, MXFP4) and dense weights (INT8, FP8) into Marlin layout at load", 0.2),
    JitTarget("topk_v1", "sglang.kernels.ops.attention.dsv4.topk", "_jit_topk_v1_module", (),
              "sgl_kernel_jit_dpsk_v4_topk_v1_*",
              "DeepSeek-V4 sparse top-k (v1; the presets turn the cluster-based v2 off)", 0.2, max_arch=90),
    JitTarget("compress_plan", "sglang.kernels.ops.attention.dsv4.compress", "_jit_compress_plan_module", (),
              "sgl_kernel_jit_dpsk_v4_compress_plan", "DeepSeek-V4 KV compressor planning (CSA/HCA layers)", 0.2),
    JitTarget("spec_tree", "sglang.kernels.ops.speculative.tree", "_jit_tree_module", (),
              "sgl_kernel_jit_speculative_tree", "MTP (EAGLE) draft tree: build, greedy verify", 0.4,
              speculative=(MTP,)),
    # (4, True): vec_size = gcd(4, vocab) is 4 for DeepSeek-V4's 129280; EAGLE's verify passes
    # deterministic=True (sglang/srt/speculative/eagle_utils.py ~783).
    JitTarget("spec_sampling", "sglang.kernels.ops.speculative.sampling", "_jit_sampling_module", (4, True),
              "sgl_kernel_jit_speculative_sampling_4_True",
              "MTP (EAGLE) verify when sampling (temperature > 0); needs cuRAND's headers", 0.6,
              speculative=(MTP,)),
    JitTarget("moe_topk_sum", "sglang.kernels.ops.moe.moe_topk_sum", "_jit_topk_sum_module", (),
              "sgl_kernel_jit_moe_topk_sum_256_*",
              "sums the MXFP4 experts' router-weighted outputs (fused_marlin_moe's MXFP4 final reduce)", 1.0,
              checkpoints=(NATIVE,)),
    JitTarget("moe_marlin_gemm1", "sglang.kernels.ops.moe.moe_wna16_marlin", "_jit_moe_wna16_marlin_module",
              ("bf16", False, False, True, False, True),
              "sgl_kernel_jit_moe_wna16_marlin_bf16_t_false_false_true_false_true",
              "routed experts, gate/up GEMM (Marlin MoE, sorted experts): INT4 uint4b8 and MXFP4 e2m1 + E8M0",
              4.0),
    JitTarget("moe_marlin_gemm2", "sglang.kernels.ops.moe.moe_wna16_marlin", "_jit_moe_wna16_marlin_module",
              ("bf16", False, False, True, True, True),
              "sgl_kernel_jit_moe_wna16_marlin_bf16_t_false_false_true_true_true",
              "routed experts, down GEMM (Marlin MoE, zeroed inactive rows): INT4 uint4b8 and MXFP4 e2m1 + E8M0",
              4.0),
    JitTarget("gptq_marlin", "sglang.kernels.ops.gemm.gptq_marlin", "_jit_gptq_marlin_module", ("bf16",),
              "sgl_kernel_jit_gptq_marlin_bf16_t",
              "W8A16 dense linears (Marlin): INT8 uint8b128 and FP8 e4m3 group 128", 9.0),
)


def cache_root(environ: Mapping[str, str]) -> Path:
    """SGLang's JIT cache root, as ``sglang.kernels.jit.utils.compile.cache.cache_root`` computes it."""
    return Path(environ.get(envvars.SGLANG_JIT_CACHE_DIR) or "~/.cache/sglang/jit").expanduser()


def targets_for(arch: str, checkpoint: str | None = None, speculative: str | None = None) -> list[JitTarget]:
    """The modules ``arch`` needs for ``checkpoint`` (one of :data:`CHECKPOINTS`; None: both) with
    ``speculative`` (a ``--speculative`` choice; None: every choice's)."""
    if checkpoint is not None and checkpoint not in CHECKPOINTS:
        raise ValueError(f"checkpoint must be one of {', '.join(CHECKPOINTS)}, got {checkpoint!r}")
    if speculative is not None and speculative not in SPECULATIVE:
        raise ValueError(f"speculative must be one of {', '.join(SPECULATIVE)}, got {speculative!r}")
    n = Arch(arch).number
    return [t for t in TARGETS if (t.max_arch is None or n < t.max_arch)
            and (checkpoint is None or checkpoint in t.checkpoints)
            and (speculative is None or not t.speculative or speculative in t.speculative)]


def is_built(target: JitTarget, arch: str, environ: Mapping[str, str]) -> bool:
    # The arch directory is e.g. sm86, sm90a or sm120f (SGLang adds the suffix).
    pattern = cache_root(environ) / f"{arch}*" / target.cache_glob / "build-*" / "deps-*" / "*.so"
    return any(glob.glob(str(pattern)))


def cold_cache_notes(arch: str, environ: Mapping[str, str], checkpoint: str | None = None,
                     speculative: str | None = None) -> list[Note]:
    """One note (code ``jit.cold-cache``) when SGLang will have to compile kernels at start-up (for
    the ``checkpoint`` format being served, None: either; with the ``speculative`` choice, None:
    any); none for an arch without JIT targets."""
    if arch not in KNOWN_ARCHES:
        return []
    missing = [t for t in targets_for(arch, checkpoint, speculative) if not is_built(t, arch, environ)]
    if not missing:
        return []
    minutes = sum(t.est_minutes for t in missing)
    fix = (f"sglang-ampere warmup --gpu {arch}" + (f" --checkpoint {checkpoint}" if checkpoint else "")
           + (f" --speculative {speculative}" if speculative else ""))
    return [note("jit.cold-cache",
                 f"SGLang's JIT cache ({cache_root(environ)}) is cold for {arch}: "
                 f"{', '.join(t.key for t in missing)} will be compiled at start-up (about {minutes:.0f} min on a "
                 f"small host; the server looks hung meanwhile). Build them first: {fix}")]


def error_line(text: str) -> str:
    """The line of a failed build's message that says what went wrong: the compiler's first
    diagnostic (gcc's and nvcc's ``error:``, ``fatal error:``; SGLang's message ends with the
    build's stderr heading, often with nothing after it), else the last non-empty line. A command
    line's ``-Werror`` flags are not a diagnostic."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return next((line for line in lines if "error:" in line.lower()), lines[-1] if lines else "")


def build(arch: str, targets: Sequence[JitTarget], out=sys.stderr) -> list[tuple[JitTarget, str, float]]:
    """Build each target for ``arch`` in this process. Returns (target, "ok"/error, seconds)."""
    import importlib

    import torch  # SGLang's builders take torch dtypes
    from sglang.kernels.jit.utils import override_jit_cuda_arch
    from tqdm import tqdm

    results = []
    major, minor = Arch(arch).capability
    bar = tqdm(total=len(targets), unit="kernel", file=out, dynamic_ncols=True,
               bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} kernels [{elapsed}]")
    with override_jit_cuda_arch(major, minor):
        for t in targets:
            bar.set_description(f"{arch} {t.key} (~{t.est_minutes:g} min)")
            start = time.monotonic()
            try:
                args = tuple(torch.bfloat16 if a == "bf16" else a for a in t.args)
                getattr(importlib.import_module(t.module), t.builder)(*args)
                status = "ok"
            except Exception as exc:  # report and go on: one broken module must not hide the rest
                status = f"{type(exc).__name__}: {error_line(str(exc))}"
            results.append((t, status, time.monotonic() - start))
            bar.update(1)
    bar.close()
    return results
