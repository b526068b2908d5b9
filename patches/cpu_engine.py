"""The CPU target: SGLang's CPU engine made to start and serve DeepSeek-V4 (no GPU, no AMX).

Target:   ``KVCacheConfigurator.configure`` (``sglang.srt.mem_cache.kv_cache_configurator``),
          ``sglang.srt.models.deepseek_v4.get_rope_wrapper``, and
          ``Fp8LinearMethod.process_weights_after_loading`` / ``.apply`` and
          ``Fp8MoEMethod.process_weights_after_loading``
          (``sglang.srt.layers.quantization.fp8``), ``PyNcclCommunicator.__init__``
          (``sglang.srt.distributed.device_communicators.pynccl``) and
          ``DeepseekV4ForCausalLM.set_embed_and_head`` (``sglang.srt.models.deepseek_v4``)
Hook:     AROUND, all seven (:data:`HOOKS`); registered only under ``SGLANG_AMPERE_TARGET=cpu`` with
          ``SGLANG_USE_CPU_ENGINE=1`` and without CUDA (:func:`sglang_ampere.cpu_target.active`;
          ``sglang-ampere launch --gpu cpu`` sets both). Anywhere else :func:`hooks` returns no hook,
          so a GPU process is never touched.
Why:      * ``configure``: SGLang's CPU platform allows an FP8 KV cache only for MHA models on Intel
            AMX with the ``intel_amx`` backend (``kv_cache_configurator.py`` 459-468) and raises
            otherwise. DeepSeek-V4 always stores its own FP8 page layout
            (``DeepSeekV4TokenToKVPool``), written and read here by torch code, so the check does not
            apply: ``configure`` runs with the module's ``current_platform`` answering
            ``is_cpu() -> False`` (everything else is the real platform object).
          * ``get_rope_wrapper``: with ``device="cpu"`` SGLang's factory takes ``get_rope_cpu``,
            which asserts a ``deepseek_yarn`` scaling (``rotary_embedding/factory.py`` ~478-481),
            but the sliding-window layers use plain RoPE (``deepseek_v4.py`` ~1402). DeepSeek-V4's
            forward never calls that rope object (it ropes with its own ``freqs_cis`` tables), so
            it is built with the generic factory, as on a GPU.
          * ``Fp8LinearMethod`` / ``Fp8MoEMethod``: the native FP8 checkpoint only. On the CPU
            engine ``fp8.py`` asserts Intel AMX and repacks for its AMX kernels (826-833,
            1290-1296, 2184-2187). A block-scaled dense layer instead keeps its FP8 bytes and
            128x128 scales as loaded, and ``apply`` runs
            :func:`sglang_ampere.quant.native_linear.reference_fp8_linear` (the weight dequantized
            exactly, one matmul: the contract FP8 Marlin W8A16 implements on Ampere, and what
            ``selftest`` checks it against). The routed experts' FP8 base method runs with
            ``fp8._is_cpu`` false (for MXFP4 it only views the packed bytes), then the MXFP4 MoE
            takes its torch reference (``quant/native_marlin_moe.py``).
          * ``PyNcclCommunicator.__init__``: with ``--pp-size``/``--tp-size`` above 1 SGLang builds
            an NCCL communicator beside each gloo group; there is no NCCL (nor CUDA) here, so the
            communicator is left disabled and the groups talk over gloo.
          * ``set_embed_and_head``: with ``--speculative-algorithm EAGLE`` the MTP draft takes the
            target's embedding and head, then calls ``torch.get_device_module().empty_cache()`` and
            ``.synchronize()`` (``deepseek_v4.py`` ~5656-5657). Without an argument torch answers
            its build's accelerator, ``torch.cuda``, and ``synchronize`` raises "Found no NVIDIA
            driver". For the call the hook answers the CPU's module (``torch.cpu.synchronize``,
            and an ``empty_cache`` that has nothing to free).
SGLang:   written for 0.5.23 (file:line above).
"""

from __future__ import annotations

import logging
import sys
from unittest import mock

from . import Hook

logger = logging.getLogger("sglang_ampere.patches.cpu_engine")

KVC = "sglang.srt.mem_cache.kv_cache_configurator"
DSV4 = "sglang.srt.models.deepseek_v4"
FP8 = "sglang.srt.layers.quantization.fp8"
PYNCCL = "sglang.srt.distributed.device_communicators.pynccl"


def active() -> bool:
    from sglang_ampere import cpu_target

    return cpu_target.active()


class _NotCpuPlatform:
    """The real platform object, except that ``is_cpu()`` is False."""

    def __init__(self, platform):
        self._platform = platform

    def is_cpu(self) -> bool:
        return False

    def __getattr__(self, name):
        return getattr(self._platform, name)


def configure_hook(original, self, *args, **kwargs):
    module = sys.modules[KVC]
    with mock.patch.object(module, "current_platform", _NotCpuPlatform(module.current_platform)):
        return original(self, *args, **kwargs)


def rope_wrapper_hook(original, *args, **kwargs):
    if "device" in kwargs:
        kwargs["device"] = None
    return original(*args, **kwargs)


def fp8_not_cpu_hook(original, *args, **kwargs):
    with mock.patch.object(sys.modules[FP8], "_is_cpu", False):
        return original(*args, **kwargs)


def pynccl_off_hook(original, self, group, *args, **kwargs):
    """The communicator's own world-size-1 exit, for every group: ``available``/``disabled`` as
    SGLang sets them when it has nothing to talk to (``pynccl.py`` ~69-72), so every collective
    falls back to the group's gloo backend."""
    self.group = group
    self.rank, self.world_size = 0, 1
    self.available, self.disabled = False, True


def fp8_linear_weights_hook(original, self, layer, *args, **kwargs):
    if getattr(self, "block_quant", False):
        return None           # FP8 bytes + block scales stay as loaded; apply reads them
    return fp8_not_cpu_hook(original, self, layer, *args, **kwargs)


def fp8_linear_apply_hook(original, self, layer, x, bias=None, *args, **kwargs):
    if getattr(self, "block_quant", False):
        from sglang_ampere.quant.native_linear import reference_fp8_linear

        return reference_fp8_linear(x, layer.weight, layer.weight_scale_inv, bias)
    return fp8_not_cpu_hook(original, self, layer, x, bias, *args, **kwargs)


class _CpuDeviceModule:
    """``torch.cpu`` plus the ``empty_cache`` it lacks (nothing is cached on the CPU)."""

    def __getattr__(self, name):
        import torch

        return getattr(torch.cpu, name)

    @staticmethod
    def empty_cache() -> None:
        return None


def cpu_device_module_hook(original, *args, **kwargs):
    import torch

    real = torch.get_device_module

    def get_device_module(device=None):
        return _CpuDeviceModule() if device is None else real(device)

    torch.get_device_module = get_device_module
    try:
        return original(*args, **kwargs)
    finally:
        torch.get_device_module = real


#: (target, hook, why) of every hook, by module constant (hooks() imports the modules first).
HOOKS: tuple = (
    (f"{KVC}.KVCacheConfigurator.configure", configure_hook,
     "CPU target: DeepSeek-V4 keeps its own FP8 KV layout; skip the CPU engine's AMX-only FP8 KV check"),
    (f"{DSV4}.get_rope_wrapper", rope_wrapper_hook,
     "CPU target: build the (unused) rope object with the generic factory, not the YaRN-only CPU one"),
    (f"{FP8}.Fp8LinearMethod.process_weights_after_loading", fp8_linear_weights_hook,
     "CPU target: native block-FP8 dense layers keep their FP8 bytes and scales (not an AMX repack)"),
    (f"{FP8}.Fp8LinearMethod.apply", fp8_linear_apply_hook,
     "CPU target: native block-FP8 dense layers run the W8A16 torch reference (FP8 Marlin's contract)"),
    (f"{FP8}.Fp8MoEMethod.process_weights_after_loading", fp8_not_cpu_hook,
     "CPU target: the MXFP4 experts' FP8 base method without the CPU engine's AMX repack"),
    (f"{PYNCCL}.PyNcclCommunicator.__init__", pynccl_off_hook,
     "CPU target: no NCCL communicator without CUDA; PP/TP groups talk over gloo"),
    (f"{DSV4}.DeepseekV4ForCausalLM.set_embed_and_head", cpu_device_module_hook,
     "CPU target: the MTP draft's embed/head hand-over synchronizes the CPU, not CUDA"),
)


def hooks() -> list[Hook]:
    if not active():
        return []
    import importlib

    for name in (KVC, DSV4, FP8, PYNCCL):
        importlib.import_module(name)
    return [Hook(target, fn, "AROUND", why) for target, fn, why in HOOKS]
