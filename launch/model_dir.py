"""The model folder check: a local dsv4_int checkpoint, or the native FP8/FP4 release.

The format is decided by :mod:`sglang_ampere.checkpoint_format` (config.json's ``quant_method``,
and for the native release the routed experts' dtype from one shard header). Below sm_90 the
native release is served without conversion when its experts are MXFP4 and the preset has a
``[native]`` table (routed experts on SGLang's Marlin MXFP4 MoE, dense FP8 on FP8 Marlin W8A16,
``wo_a`` in BF16); on sm_90+ SGLang's own kernels serve it.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from pathlib import Path

from sglang_ampere import MODEL_ARCHITECTURE, QUANT_METHOD
from sglang_ampere import checkpoint_format as fmt
from sglang_ampere.gpus import CPU_ARCH
from sglang_ampere.notes import Note, note

from .errors import LaunchError
from .presets import Preset


def below_sm90(arch: str) -> bool:
    """Whether ``arch`` takes sglang-ampere's paths (``"sm86"`` yes, ``"sm90"`` no; the CPU target
    takes them too, with torch stand-ins for the kernels)."""
    return arch == CPU_ARCH or int(arch[2:]) < 90


@dataclass(frozen=True)
class ModelDir:
    path: str
    format: fmt.CheckpointFormat
    notes: list[Note] = field(default_factory=list)
    #: True when the launcher adds the preset's [native] table (native checkpoint below sm_90).
    native_path: bool = False
    #: config.json, for the rules that read it later (the speculative draft source).
    config: dict = field(default_factory=dict)

    @property
    def served_format(self) -> str | None:
        """The format whose sglang-ampere path serves this checkpoint (warmup's ``--checkpoint``
        name): dsv4_int always, native below sm_90; None when SGLang's own sm_90+ kernels do."""
        if self.format.kind == fmt.DSV4_INT:
            return fmt.DSV4_INT
        return fmt.NATIVE if self.native_path else None


def check_model(path: str | None, arch: str, preset: Preset) -> ModelDir:
    """The model directory (validated), its format and notes; ``path`` is SGLang's merged ``model_path``."""
    if path is None:
        raise LaunchError("pass --model-path DIR: a dsv4_int checkpoint (sglang-ampere convert SRC DST makes one) "
                          "or the native DeepSeek-V4-Flash release")
    p = Path(path).expanduser()
    if not p.exists():
        raise LaunchError(f"--model-path {path}: no such directory. The launcher needs a local "
                          "checkpoint; download it first (e.g. huggingface-cli download REPO --local-dir DIR)")
    try:
        cfg = fmt.read_config(p)
        found = fmt.detect(p, cfg)
    except fmt.CheckpointFormatError as exc:
        raise LaunchError(f"--model-path {path}: {exc}") from exc
    notes = []
    archs = cfg.get("architectures") or []
    if MODEL_ARCHITECTURE not in archs:
        notes.append(note("launch.not-v4-flash", f"{p / 'config.json'} declares architectures={archs}, not "
                          f"{MODEL_ARCHITECTURE}; the presets are tuned for DeepSeek-V4-Flash"))
    if found.kind == fmt.DSV4_INT:
        return ModelDir(str(p), found, notes, config=cfg)
    if found.kind == fmt.NATIVE and not below_sm90(arch):
        notes.append(note("launch.native-on-sglang", f"{path} is the native {found.quant_method} checkpoint; on "
                          f"{arch} it runs on SGLang's own kernels (the sglang-ampere kernels are not used)"))
        return ModelDir(str(p), found, notes, config=cfg)
    convert = f"sglang-ampere convert {shlex.quote(str(p))} DST, then launch with --model-path DST"
    if found.kind == fmt.NATIVE:
        if not found.mxfp4_experts:
            what = (f"{found.expert_dtype}" if found.expert_dtype else
                    "not found in the shard headers (no layers.N.ffn.experts.E.w1.weight)")
            raise LaunchError(
                f"{path} is a native fp8 checkpoint whose routed experts are {what}; below sm_90 only MXFP4 "
                "experts (I8/U8 codes + F8_E8M0 scales, as DeepSeek releases them) run, on SGLang's Marlin "
                f"MXFP4 MoE. Use the release's own shards, or serve it on sm_90+")
        if not (preset.native_env or preset.native_args):
            raise LaunchError(
                f"{path} is the native FP8/FP4 checkpoint, and preset {preset.source} has no [native] table "
                f"(what {arch} needs for it, e.g. --moe-runner-backend marlin). Start your preset with "
                f'extends = "{arch}" in [preset], or requantize once: {convert}')
        notes.append(note("launch.native-served",
                          f"{path} is the native FP8/FP4 checkpoint, served without conversion on {arch}: routed "
                          "experts on SGLang's Marlin MXFP4 MoE (W4A16), dense FP8 layers on FP8 Marlin W8A16, wo_a "
                          f"dequantized to BF16 at load; preset {preset.source}'s [native] settings are added (not "
                          "yet run on a GPU; `sglang-ampere selftest` checks these kernels on the card)"))
        return ModelDir(str(p), found, notes, native_path=True, config=cfg)
    raise LaunchError(
        f"{p / 'config.json'}: quantization_config.quant_method is {found.quant_method!r}, expected "
        f"{QUANT_METHOD!r} or the native release's {fmt.NATIVE_QUANT_METHOD!r}. "
        "Make a dsv4_int checkpoint with: sglang-ampere convert SRC DST")
