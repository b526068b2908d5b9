"""DeepSeek-V4 attention on GPUs below sm_90: FlashMLA calls routed to sglang-ampere's sparse MLA.

Target:   ``sglang.srt.layers.attention.deepseek_v4_backend`` (``BE`` below):
          ``BE._create_flashmla_metadata``, ``BE.DeepseekV4AttnBackend.__init__``,
          ``BE.DeepseekV4AttnBackend._use_sparse_prefill``, ``BE.DeepseekV4AttnBackend.forward``
Hook:     AROUND, all four; on sm_90 and newer each one calls the original unchanged, unless
          ``SGLANG_AMPERE_TARGET=ampere`` sends the card down the path below (:func:`needs_ampere_path`).
Why:      FlashMLA, the only attention kernel this backend has on CUDA, exists for sm_90/sm_100
          only. Below sm_90:
          * ``_create_flashmla_metadata`` returns ``None`` (FlashMLA's schedule object needs the
            ``flash_mla`` extension; every consumer already accepts ``None``);
          * ``__init__`` runs the original (with a stand-in ``flash_mla_interface`` module if the
            ``flash_mla`` extension cannot load), then rebinds ``self._flash_mla_with_kvcache``
            to our paged sparse-MLA entry point. That one call site serves decode, MTP verify,
            draft extend, multi-step draft decode and, with the next hook, every prefill;
          * ``_use_sparse_prefill`` returns ``False``: upstream sends every non-speculative
            extend to FlashMLA sparse prefill (``SGLANG_OPT_FLASHMLA_SPARSE_PREFILL`` defaults
            on, and chunks above 11,673 tokens are forced there), whose Triton FP8 dequantizer
            cannot compile below sm_89; extends then use the paged call like decode does;
          * ``forward`` records whether this forward is a prefill (non-speculative extend) or
            a decode-like step, so the paged call runs the implementation chosen for that
            phase by ``SGLANG_AMPERE_PREFILL_BACKEND`` / ``SGLANG_AMPERE_DECODE_BACKEND``
            (``torch`` | ``tilelang``; the launcher sets them from ``--nsa-prefill-backend`` /
            ``--nsa-decode-backend``).
SGLang:   written for 0.5.23 (``deepseek_v4_backend.py`` lines ~210-215, 1231-1275, 2917-2933,
          4132-4141, 4363-4399).
"""

from __future__ import annotations

import functools
import importlib
import inspect
import logging
import sys
import types

from sglang_ampere import SGLANG_PIN, envvars

from . import Hook

logger = logging.getLogger("sglang_ampere.patches.dsv4_attention")

BE = "sglang.srt.layers.attention.deepseek_v4_backend"
FMI = "sglang.kernels.ops.attention.flash_mla_interface"
PHASE_ATTR = "_sglang_ampere_phase"
BACKENDS_ATTR = "_sglang_ampere_backends"
PHASES = ("prefill", "decode")
_ENV = {"prefill": envvars.PREFILL_BACKEND, "decode": envvars.DECODE_BACKEND}


@functools.lru_cache(maxsize=1)
def needs_ampere_path() -> bool:
    """True on a CUDA GPU that takes the sm_80/sm_86 path: below sm_90, or any sm_90+ card under
    ``SGLANG_AMPERE_TARGET=ampere`` (decided once per process, on the current device, by
    :func:`sglang_ampere.gpus.takes_ampere_path`, the one place that decision is made); and on
    the CPU target (:mod:`sglang_ampere.cpu_target`), which serves attention and the indexer with
    this package's torch implementations through the same hooks."""
    import torch

    from sglang_ampere import cpu_target, gpus

    if not torch.cuda.is_available():
        return cpu_target.active()
    return gpus.takes_ampere_path(torch.cuda.get_device_capability())


def chosen_backends() -> dict[str, str]:
    """{"prefill": "torch"|"tilelang", "decode": ...} from the environment (validated)."""
    return {phase: envvars.get(_ENV[phase]) for phase in PHASES}


def paged_impl(name: str):
    """The FlashMLA-compatible paged callable of one implementation."""
    from sglang_ampere.kernels import sparse_mla

    if name == "torch":
        return sparse_mla.sparse_mla_paged_torch
    if name == "tilelang":
        return sparse_mla.sparse_mla_paged_tilelang
    raise ValueError(f"unknown sparse-MLA backend {name!r}; use torch or tilelang")


def route_paged_call(backends: dict[str, str], phase: str | None, **flash_mla_kwargs):
    """Run one ``flash_mla_with_kvcache`` call on the implementation chosen for ``phase``.

    ``phase`` None (a forward that did not go through ``DeepseekV4AttnBackend.forward``) counts
    as decode: those are the small speculative/draft steps.
    """
    name = backends["prefill" if phase == "prefill" else "decode"]
    return paged_impl(name)(**flash_mla_kwargs)


def make_paged_callable(backend) -> "callable":
    """What ``backend._flash_mla_with_kvcache`` becomes: FlashMLA's keywords (``use_legacy`` too)."""

    def flash_mla_with_kvcache_ampere(**kwargs):
        return route_paged_call(getattr(backend, BACKENDS_ATTR), getattr(backend, PHASE_ATTR, None), **kwargs)

    flash_mla_with_kvcache_ampere.sglang_ampere = True
    return flash_mla_with_kvcache_ampere


# ---------------------------------------------------------------------------------------------
# A stand-in for sglang.kernels.ops.attention.flash_mla_interface when flash_mla cannot load

def _unavailable(name):
    def fn(*args, **kwargs):
        raise RuntimeError(
            f"FlashMLA's {name} is not available below sm_90; sglang-ampere routes DeepSeek-V4 "
            "attention to its own kernels, so reaching this means a hook did not apply - run "
            "`sglang-ampere doctor` and check the log for sglang_ampere hook errors")
    return fn


def stub_flash_mla_interface() -> types.ModuleType:
    mod = types.ModuleType(FMI)
    mod.__doc__ = "sglang-ampere stand-in: the flash_mla extension does not load on this GPU."
    mod.SPLIT_KV_MIN_TOPK = 641            # the value 0.5.23's module defines; read by V4.1 code only

    class FlashMLASchedMeta:               # placeholder type
        """Never instantiated here; _create_flashmla_metadata returns None below sm_90."""

    mod.FlashMLASchedMeta = FlashMLASchedMeta
    mod.get_mla_metadata = lambda *a, **k: (None, None)
    mod.flash_mla_with_kvcache = _unavailable("flash_mla_with_kvcache")
    mod.flash_mla_sparse_fwd = _unavailable("flash_mla_sparse_fwd")
    mod.sglang_ampere_stub = True
    return mod


def ensure_flash_mla_interface() -> bool:
    """Import FlashMLA's interface module, or install the stand-in. True if the stand-in is used."""
    try:
        __import__(FMI)
        return getattr(sys.modules[FMI], "sglang_ampere_stub", False)
    except (ImportError, OSError) as e:
        logger.info("flash_mla does not load here (%s); using sglang-ampere's stand-in module", e)
        sys.modules.pop(FMI, None)
        stub = stub_flash_mla_interface()
        sys.modules[FMI] = stub
        parent = sys.modules.get(FMI.rsplit(".", 1)[0])
        if parent is not None:
            parent.flash_mla_interface = stub
        return True


# ---------------------------------------------------------------------------------------------
# The hooks

def create_flashmla_metadata_hook(original, *args, **kwargs):
    if not needs_ampere_path():
        return original(*args, **kwargs)
    return None


def precompile_kernels(module, what: str, instead: str, log) -> int:
    """``module.precompile(log=log)`` (a TileLang kernel module's build of every kernel serving uses);
    a failure raised as a RuntimeError naming ``what`` did not build and what to do ``instead``."""
    try:
        return module.precompile(log=log)
    except Exception as e:
        raise RuntimeError(f"TileLang could not build the {what} ({type(e).__name__}: {e}). {instead}") from e


@functools.lru_cache(maxsize=1)
def precompile_tilelang() -> int:
    """Build every paged TileLang kernel once per process, before CUDA-graph capture."""
    from sglang_ampere.kernels import tilelang_mla

    return precompile_kernels(
        tilelang_mla, "sparse-MLA kernels", "Install the CUDA toolkit's nvcc (TileLang compiles with it), or run "
        f"attention on the torch fallback: {envvars.DECODE_BACKEND}=torch {envvars.PREFILL_BACKEND}=torch",
        logger.info)


def backend_init_hook(original, self, *args, **kwargs):
    if not needs_ampere_path():
        return original(self, *args, **kwargs)
    backends = chosen_backends()               # fail at start-up on a bad setting, not mid-serve
    ensure_flash_mla_interface()
    result = original(self, *args, **kwargs)
    setattr(self, BACKENDS_ATTR, backends)
    setattr(self, PHASE_ATTR, None)
    self._flash_mla_with_kvcache = make_paged_callable(self)
    if backends["decode"] == "tilelang":
        precompile_tilelang()      # decode runs in CUDA graphs: no JIT compile during capture
    if not hasattr(self, "_flashmla_split_kv_min_topk"):
        self._flashmla_split_kv_min_topk = 641
    return result


def use_sparse_prefill_hook(original, self, *args, **kwargs):
    if not needs_ampere_path():
        return original(self, *args, **kwargs)
    return False


def phase_of(forward_batch) -> str:
    mode = getattr(forward_batch, "forward_mode", None)
    if mode is not None and hasattr(mode, "is_extend_without_speculative"):
        return "prefill" if mode.is_extend_without_speculative() else "decode"
    return "decode"


@functools.lru_cache(maxsize=8)
def forward_batch_position(forward) -> int:
    """Index in ``args`` (after ``self``) of ``forward``'s ``forward_batch`` parameter, read from its
    signature; a TypeError if it has none (SGLang changed the method: verification must fail,
    not silently read another argument)."""
    params = list(inspect.signature(forward).parameters.values())
    for i, p in enumerate(params[1:]):
        if p.name == "forward_batch":
            if p.kind not in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
                return -1                      # keyword-only: never positional
            return i
    raise TypeError(f"{getattr(forward, '__qualname__', forward)}{inspect.signature(forward)} has no "
                    "forward_batch parameter; sglang_ampere's dsv4_attention hook was written for "
                    f"SGLang {SGLANG_PIN}'s forward(self, q, k, v, layer, forward_batch, ...)")


def forward_hook(original, self, *args, **kwargs):
    """Around ``forward``: record the phase of its ``forward_batch`` (positional or by keyword,
    located by name in ``original``'s signature), then run it."""
    if needs_ampere_path():
        if "forward_batch" in kwargs:
            fb = kwargs["forward_batch"]
        else:
            i = forward_batch_position(original)
            fb = args[i] if 0 <= i < len(args) else None
        setattr(self, PHASE_ATTR, phase_of(fb))
    return original(self, *args, **kwargs)


def hooks() -> list[Hook]:
    # Fail here (the plugin reports this module's hooks as not in effect) if forward's signature
    # no longer has forward_batch, rather than mis-reading the phase at run time.
    forward_batch_position(importlib.import_module(BE).DeepseekV4AttnBackend.forward)
    return [
        Hook(f"{BE}._create_flashmla_metadata", create_flashmla_metadata_hook, "AROUND",
             "below sm_90 there is no FlashMLA schedule object; consumers accept None"),
        Hook(f"{BE}.DeepseekV4AttnBackend.__init__", backend_init_hook, "AROUND",
             "below sm_90 bind the paged FlashMLA call to sglang-ampere's sparse-MLA kernels"),
        Hook(f"{BE}.DeepseekV4AttnBackend._use_sparse_prefill", use_sparse_prefill_hook, "AROUND",
             "below sm_90 FlashMLA sparse prefill (and its FP8 Triton dequant) cannot run; use the paged call"),
        Hook(f"{BE}.DeepseekV4AttnBackend.forward", forward_hook, "AROUND",
             "below sm_90 note prefill vs decode so each phase uses its chosen sparse-MLA backend"),
    ]


def is_applied(backend) -> bool:
    """For the plugin's verification: did the __init__ hook rebind this backend's FlashMLA call?"""
    fn = getattr(backend, "_flash_mla_with_kvcache", None)
    return bool(getattr(fn, "sglang_ampere", False))
