"""The native DeepSeek-V4 checkpoint (FP8 dense, MXFP4 routed experts) on GPUs below sm_90.

Target:   ``sglang.srt.layers.quantization.fp8.Fp8Config.get_quant_method`` (``TARGET`` below)
Hook:     AROUND. It runs the original and acts only for a DeepSeek-V4 model (SGLang's loader
          sets ``Fp8Config.is_dsv4_fp4_experts`` for those) on the Ampere path
          (:func:`dsv4_attention.needs_ampere_path`: below sm_90, or sm_90+ under
          ``SGLANG_AMPERE_TARGET=ampere``), plus the CPU case below; everything else is returned
          unchanged.
Why:      With ``--moe-runner-backend marlin`` the original returns SGLang's
          ``Mxfp4MarlinMoEMethod`` for the routed experts, whose ``process_weights_after_loading``
          raises "MXFP4 Marlin requires SM90 or SM120" although the repack and the Marlin MoE
          kernel after the gate are generic. The hook returns
          :class:`~sglang_ampere.quant.native_marlin_moe.AmpereMxfp4MarlinMoEMethod` instead (the
          same method, same FP8 base method, without the gate). It is the narrowest place that
          sees every routed-expert, dense and attention-side choice of this config at model build,
          so it also refuses, naming what to set, every setting that would send the native path
          to a kernel sm_80/sm_86 cannot run:
          * routed experts not on Marlin MXFP4 (``--moe-runner-backend`` other than ``marlin``,
            ``SGLANG_DSV4_FP4_DEQUANT=1`` which turns them into an FP8 x FP8 MoE, FP8 experts,
            an a2a backend other than ``none``, or the shared expert fused into the MXFP4 tensor);
          * a dense FP8 layer without FP8 Marlin W8A16 (SGLang enables it by itself on
            sm_80..sm_88; an sm_90+ card under the Ampere target needs ``SGLANG_FORCE_FP8_MARLIN=1``;
            sm_89 may keep SGLang's FP8 GEMMs, which its FP8 tensor cores run);
          * the FP8 ``wo_a`` einsum (DeepGEMM ``fp8_einsum``), on unless
            ``SGLANG_OPT_FP8_WO_A_GEMM=0``; with it off SGLang dequantizes ``wo_a`` to BF16 while
            loading (``_prepare_deepseek_v4_weights``), which is what the Ampere path uses.
          Without CUDA (CPU tests) a Marlin choice also gets the subclass, whose reference path
          lets SGLang's real model load there; the parent could not run there at all.
SGLang:   written for 0.5.23 (``fp8.py`` ``get_quant_method`` ~389-485, the Marlin choice ~445-450;
          ``mxfp4_marlin_moe.py`` gate ~160-161; ``fp8.py`` ``Fp8LinearMethod.__init__`` ~514-518;
          ``deepseek_v4.py`` ``wo_a_fp8_gemm_enabled`` ~276-289).
"""

from __future__ import annotations

import logging
import sys

from . import Hook

logger = logging.getLogger("sglang_ampere.patches.dsv4_native")

TARGET = "sglang.srt.layers.quantization.fp8.Fp8Config.get_quant_method"
DSV4_MODEL = "sglang.srt.models.deepseek_v4"


class NativeAmpereError(RuntimeError):
    """A setting would send the native checkpoint to a kernel this GPU cannot run."""


def on_ampere_path() -> bool:
    """The one decision, as the attention patches make it (tests replace this function)."""
    from .dsv4_attention import needs_ampere_path

    return needs_ampere_path()


def _cuda_present() -> bool:
    import torch

    return torch.cuda.is_available()


def fp8_dense_needs_marlin() -> bool:
    """On the Ampere path, whether dense FP8 must take FP8 Marlin: always, except on sm_89 (Ada),
    whose FP8 tensor cores run SGLang's own FP8 GEMMs."""
    import torch

    return not torch.cuda.is_available() or torch.cuda.get_device_capability()[:2] != (8, 9)


def check_wo_a(config) -> None:
    """Refuse the FP8 wo_a einsum (read once by SGLang at import of its DeepSeek-V4 model)."""
    model = sys.modules.get(DSV4_MODEL)
    if model is not None and model.wo_a_fp8_gemm_enabled(config):
        raise NativeAmpereError(
            "the native DeepSeek-V4 checkpoint keeps wo_a in FP8 for DeepGEMM's fp8_einsum, which has no "
            "sm_80/sm_86 kernel: set SGLANG_OPT_FP8_WO_A_GEMM=0 in the server's environment (SGLang reads it "
            "when it imports the model; `sglang-ampere launch` sets it) so SGLang dequantizes wo_a to BF16")


def check_moe(config, layer, prefix: str, method) -> None:
    """Refuse routed experts that would not run on Marlin MXFP4."""
    from sglang.srt.layers.moe.utils import get_moe_a2a_backend, get_moe_runner_backend
    from sglang.srt.layers.quantization.unquant import UnquantizedFusedMoEMethod

    from sglang_ampere.quant.native_marlin_moe import AmpereMxfp4MarlinMoEMethod

    if not get_moe_a2a_backend().is_none():
        raise NativeAmpereError(
            f"{prefix}: --moe-a2a-backend {get_moe_a2a_backend().value} prepares the experts for kernels that "
            "need sm_90+; on Ampere the native checkpoint's experts run on Marlin MXFP4 with "
            "--moe-a2a-backend none (the default)")
    if getattr(layer, "num_fused_shared_experts", 0):
        raise NativeAmpereError(
            f"{prefix}: --enforce-shared-experts-fusion appends the FP8 shared expert to the MXFP4 routed-expert "
            "tensor, which would read its FP8 bytes as MXFP4 (Fp8Config does not forbid it); drop the flag")
    if isinstance(method, (AmpereMxfp4MarlinMoEMethod, UnquantizedFusedMoEMethod)):
        return
    backend = get_moe_runner_backend().value
    if config.is_fp4_experts and config.dequant_fp4_to_fp8:
        reason = ("SGLANG_DSV4_FP4_DEQUANT=1 turns the MXFP4 experts into FP8 for an FP8 x FP8 MoE kernel "
                  "(sm_89+); unset it and pass --moe-runner-backend marlin")
    elif config.is_fp4_experts:
        reason = (f"--moe-runner-backend {backend} gives {type(method).__name__}, which has no sm_80/sm_86 "
                  "kernel for MXFP4 experts; pass --moe-runner-backend marlin (also for the MTP draft: leave "
                  "--speculative-moe-runner-backend unset or marlin)")
    else:
        reason = ("this checkpoint's routed experts are FP8, and SGLang's FP8 MoE kernels need sm_89+; serve the "
                  "MXFP4 release (--moe-runner-backend marlin) or convert it with `sglang-ampere convert`")
    raise NativeAmpereError(f"{prefix}: {reason}")


def check_linear(prefix: str, method) -> None:
    """Refuse a dense FP8 layer that would not take FP8 Marlin W8A16 (on the CPU target every
    block-FP8 dense layer runs the W8A16 torch reference instead: ``patches/cpu_engine.py``)."""
    from sglang.srt.layers.quantization.fp8 import Fp8LinearMethod

    from sglang_ampere import cpu_target

    if cpu_target.active():
        return

    if isinstance(method, Fp8LinearMethod) and not method.use_marlin and fp8_dense_needs_marlin():
        raise NativeAmpereError(
            f"{prefix}: SGLang chose its FP8 x FP8 GEMMs for this dense layer (FP8 Marlin is enabled by itself only "
            "on sm_80..sm_88); set SGLANG_FORCE_FP8_MARLIN=1 so the FP8 weights run on FP8 Marlin W8A16")


def get_quant_method_hook(original, self, layer, prefix):
    """AROUND ``Fp8Config.get_quant_method(layer, prefix)``."""
    method = original(self, layer, prefix)
    if not getattr(self, "is_dsv4_fp4_experts", False):       # not a DeepSeek-V4 model
        return method
    ampere = on_ampere_path()
    from sglang.srt.layers.linear import LinearBase
    from sglang.srt.layers.moe.fused_moe_triton.layer import FusedMoE
    from sglang.srt.layers.quantization.mxfp4_marlin_moe import Mxfp4MarlinMoEMethod

    from sglang_ampere.quant.native_marlin_moe import AmpereMxfp4MarlinMoEMethod

    if type(method) is Mxfp4MarlinMoEMethod and (ampere or not _cuda_present()):
        method = AmpereMxfp4MarlinMoEMethod(method._fp8, prefix=method.prefix)
    if not ampere:
        return method
    check_wo_a(self)
    if isinstance(layer, FusedMoE):
        check_moe(self, layer, prefix, method)
    elif isinstance(layer, LinearBase):
        check_linear(prefix, method)
    return method


def hooks() -> list[Hook]:
    return [Hook(TARGET, get_quant_method_hook, "AROUND",
                 "native DeepSeek-V4 below sm_90: MXFP4 experts on Marlin without its SM90/SM120 gate; refuse "
                 "settings that need sm_90+ kernels")]
