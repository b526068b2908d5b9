"""Environment variables this package reads: the one table of their names and meanings.

The launcher writes them (from ``--nsa-*-backend`` and presets); the plugin, the patches and
the kernels read them through :func:`get`. The names of SGLang's own variables that this
package sets or reads in code follow in a second section (names only: SGLang owns their meaning).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Mapping


@dataclass(frozen=True)
class EnvVar:
    name: str
    default: str
    choices: tuple[str, ...] | None
    help: str


#: The names, for code: ``envvars.PREFILL_BACKEND`` rather than the string, so that a rename is one
#: edit and a typo an AttributeError.
PREFILL_BACKEND = "SGLANG_AMPERE_PREFILL_BACKEND"
DECODE_BACKEND = "SGLANG_AMPERE_DECODE_BACKEND"
TORCH_MLA_BUDGET_MB = "SGLANG_AMPERE_TORCH_MLA_BUDGET_MB"
INDEXER_BACKEND = "SGLANG_AMPERE_INDEXER_BACKEND"
INDEXER_BUDGET_MB = "SGLANG_AMPERE_INDEXER_BUDGET_MB"
MOE_BACKEND = "SGLANG_AMPERE_MOE_BACKEND"
TARGET = "SGLANG_AMPERE_TARGET"
ALLOW_ANY_SGLANG = "SGLANG_AMPERE_ALLOW_ANY_SGLANG"
LIBCUDA = "SGLANG_AMPERE_LIBCUDA"
WHEEL_CACHE = "SGLANG_AMPERE_WHEEL_CACHE"

_VARS = (
    EnvVar(PREFILL_BACKEND, "tilelang", ("torch", "tilelang"),
           "sparse-MLA implementation for prefill on GPUs below sm_90 (launcher: --nsa-prefill-backend)"),
    EnvVar(DECODE_BACKEND, "tilelang", ("torch", "tilelang"),
           "sparse-MLA implementation for decode on GPUs below sm_90 (launcher: --nsa-decode-backend)"),
    EnvVar(TORCH_MLA_BUDGET_MB, "256", None,
           "largest intermediate (MB) the torch sparse-MLA fallback may allocate per chunk"),
    EnvVar(INDEXER_BACKEND, "tilelang", ("torch", "tilelang"),
           "C4 indexer logits (paged MQA) on GPUs below sm_90 (launcher: --nsa-indexer-backend)"),
    EnvVar(INDEXER_BUDGET_MB, "256", None,
           "largest intermediate (MB) the torch indexer-logits path may allocate per chunk"),
    EnvVar(MOE_BACKEND, "marlin", ("marlin", "triton"),
           "INT4 routed-expert kernel on CUDA: Marlin MoE (repacked at load) or SGLang's Triton WNA16 MoE"),
    EnvVar(TARGET, "auto", ("auto", "ampere", "cpu"),
           "ampere = an sm_90+ GPU takes exactly the sm_80/sm_86 path (our sparse-MLA and indexer kernels "
           "built for its arch, Marlin methods, the Ampere preset), so a Hopper card validates the Ampere code; "
           "cpu = no GPU: SGLang's CPU engine with sglang-ampere's torch stand-ins for every CUDA-only op "
           "(`launch --gpu cpu` sets it; ignored where CUDA is available)"),
    EnvVar(ALLOW_ANY_SGLANG, "0", ("0", "1"),
           "1 = start even if the installed SGLang is not the pinned release (unsupported)"),
    EnvVar(LIBCUDA, "libcuda.so.1", None,
           "the CUDA driver library the device kit's runner opens (a path, or a name the loader finds)"),
    EnvVar(WHEEL_CACHE, "~/.cache/sglang-ampere/wheels", None,
           "where `device-kit` keeps the wheels it packs, so a rebuild does not download them again"),
)

VARS: dict[str, EnvVar] = {v.name: v for v in _VARS}

# --- SGLang's own variables this package sets or reads in code (SGLang 0.5.23 defines them) ---

#: 1 = SGLang's CPU engine (``launch --gpu cpu`` sets it; :mod:`sglang_ampere.cpu_target` reads it).
SGLANG_USE_CPU_ENGINE = "SGLANG_USE_CPU_ENGINE"
#: Layers per pipeline stage, comma-separated (the launcher writes the balanced split).
SGLANG_PP_LAYER_PARTITION = "SGLANG_PP_LAYER_PARTITION"
#: 1 = speculative decoding across pipeline stages (the launcher sets it for MTP with pp > 1).
SGLANG_ENABLE_PP_SPEC = "SGLANG_ENABLE_PP_SPEC"
#: SGLang's JIT kernel cache (default ``~/.cache/sglang/jit``); ``warmup`` fills it.
SGLANG_JIT_CACHE_DIR = "SGLANG_JIT_CACHE_DIR"
#: 1 = SGLang recompiles its JIT kernels instead of loading them from the cache.
SGLANG_JIT_FORCE_RECOMPILE = "SGLANG_JIT_FORCE_RECOMPILE"
#: 1 = FP8 weights on FP8 Marlin (W8A16) whatever the GPU (the native preset and self-checks set it).
SGLANG_FORCE_FP8_MARLIN = "SGLANG_FORCE_FP8_MARLIN"
#: Which cores each CPU-engine rank binds its OpenMP threads to (the launcher sets it for ``--gpu cpu``).
SGLANG_CPU_OMP_THREADS_BIND = "SGLANG_CPU_OMP_THREADS_BIND"
#: Comma-separated plugin names SGLang loads; unset = all installed (``doctor`` checks ours is in it).
SGLANG_PLUGINS = "SGLANG_PLUGINS"
#: SGLang's top-k v2 JIT kernel (the Ampere presets set 0).
SGLANG_OPT_USE_TOPK_V2 = "SGLANG_OPT_USE_TOPK_V2"
#: 1 = indexer logits in torch instead of DeepGEMM (the Ampere/Ada presets set 1).
SGLANG_FP8_PAGED_MQA_LOGITS_TORCH = "SGLANG_FP8_PAGED_MQA_LOGITS_TORCH"
#: 1 = one GEMM for ``wq_a`` + ``wkv`` (SGLang's default; the presets set 0).
SGLANG_OPT_FUSE_WQA_WKV = "SGLANG_OPT_FUSE_WQA_WKV"
#: DeepGEMM's FP8 ``wo_a`` einsum (sm_90+); the native preset sets 0 below sm_90.
SGLANG_OPT_FP8_WO_A_GEMM = "SGLANG_OPT_FP8_WO_A_GEMM"
#: The fork-era variable that selected FlashMLA's replacement; SGLang 0.5.23 reads it only on ROCm.
SGLANG_HACK_FLASHMLA_BACKEND = "SGLANG_HACK_FLASHMLA_BACKEND"
HACK_FLASHMLA_VAR = SGLANG_HACK_FLASHMLA_BACKEND

#: Fork-era variables users still export, and what each does with SGLang 0.5.23 on CUDA
#: (checked against the installed source by tests/test_presets.py). ``launch`` and ``doctor``
#: print the line when they see one set.
FORK_VARS: dict[str, str] = {
    HACK_FLASHMLA_VAR: "SGLang 0.5.23 reads it only on ROCm; here =torch (or =tilelang) selects the "
                       "sglang-ampere sparse-MLA backend for prefill and decode",
    "SGLANG_APPLY_CONFIG_BACKUP": "does nothing: SGLang 0.5.23 never reads it (safe to drop)",
    SGLANG_OPT_FP8_WO_A_GEMM: "affects only the native FP8 checkpoint (DeepGEMM FP8 wo_a einsum, sm_90+); "
                                "the presets' [native] table sets 0 for it below sm_90, and a dsv4_int wo_a "
                                "is BF16 after load, so there it changes nothing",
    SGLANG_OPT_FUSE_WQA_WKV: "read by SGLang: 1 fuses wq_a+wkv into one GEMM; dsv4_int loads either way "
                               "unless the two differ in dtype, and the presets set 0",
    SGLANG_FP8_PAGED_MQA_LOGITS_TORCH: "read by SGLang: 1 computes indexer logits in torch instead "
                                         "of DeepGEMM (Hopper-only); the Ampere/Ada presets set 1",
}


def get(name: str, environ: Mapping[str, str] | None = None) -> str:
    """The variable's value in ``environ`` (default ``os.environ``) or its default, validated."""
    var = VARS[name]
    value = (os.environ if environ is None else environ).get(name, var.default).strip()
    if var.choices is not None and value not in var.choices:
        raise ValueError(f"{name}={value!r} is not one of {', '.join(var.choices)}")
    return value


def same_value(name: str, a: str, b: str) -> bool:
    """Whether ``a`` and ``b`` mean the same to the reader of the variable ``name``: ours as
    :func:`get` reads them (stripped); SGLang's typed ones through their own parser
    (``sglang.srt.environ.envs``: for an ``EnvBool`` "0", "false" and "no" are one value); any
    other (e.g. ``SGLANG_USE_CPU_ENGINE``, which SGLang compares with "1") as strings."""
    if a == b:
        return True
    if name in VARS:
        return a.strip() == b.strip()
    try:
        from sglang.srt.environ import envs
    except ImportError:         # the converter-only install: no SGLang to read it
        return False
    parse = getattr(getattr(envs, name, None), "parse", None)
    if parse is None:
        return False
    try:
        return parse(a) == parse(b)
    except ValueError:          # not a value SGLang reads: it differs from the preset's
        return False


def budget_bytes(name: str, budget_mb: float | None = None) -> int:
    """A memory budget in bytes: ``budget_mb`` if given, else the MB the variable ``name`` holds.

    Refuses a value that is not a positive number, naming the variable.
    """
    if budget_mb is None:
        raw = get(name)
        try:
            budget_mb = float(raw)
        except ValueError:
            raise ValueError(f"{name}={raw!r} is not a number; set it to a size in MB such as "
                             f"{VARS[name].default}") from None
    if not budget_mb > 0:
        raise ValueError(f"{name}: the memory budget must be a positive number of MB, got {budget_mb}")
    return int(budget_mb * 2**20)
