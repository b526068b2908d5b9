"""The model folder check: a local dsv4_int checkpoint (native FP8/FP4 only on sm_90+)."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

from sglang_ampere import MODEL_ARCHITECTURE, QUANT_METHOD

from .errors import LaunchError

NATIVE_METHODS = ("fp8", "mxfp4")


def arch_number(arch: str) -> int:
    """``"sm86"`` -> 86."""
    return int(arch[2:])


def check_model(path: str | None, arch: str) -> tuple[str, list[str]]:
    """The model directory (validated) and notes about it; ``path`` is SGLang's merged ``model_path``."""
    if path is None:
        raise LaunchError("pass --model-path DIR, a dsv4_int checkpoint "
                          "(make one with: sglang-ampere convert SRC DST)")
    p = Path(path).expanduser()
    if not p.exists():
        raise LaunchError(f"--model-path {path}: no such directory. The launcher needs a local "
                          "checkpoint; download it first (e.g. huggingface-cli download REPO --local-dir DIR)")
    cfg_file = p / "config.json"
    if not cfg_file.is_file():
        raise LaunchError(f"--model-path {path}: no config.json there; point it at the checkpoint "
                          "directory (the one holding config.json and *.safetensors)")
    try:
        cfg = json.loads(cfg_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise LaunchError(f"{cfg_file}: unreadable JSON ({exc})") from exc
    qcfg = cfg.get("quantization_config") if isinstance(cfg, dict) else None
    method = qcfg.get("quant_method") if isinstance(qcfg, dict) else None
    notes = []
    archs = cfg.get("architectures") or [] if isinstance(cfg, dict) else []
    if MODEL_ARCHITECTURE not in archs:
        notes.append(f"note: {cfg_file} declares architectures={archs}, not {MODEL_ARCHITECTURE}; "
                     "the presets are tuned for DeepSeek-V4-Flash")
    if method == QUANT_METHOD:
        return str(p), notes
    if method in NATIVE_METHODS and arch_number(arch) >= 90:
        notes.append(f"note: {path} is the native {method} checkpoint; on {arch} it runs on SGLang's "
                     "own kernels (the dsv4_int path is not used)")
        return str(p), notes
    if method in NATIVE_METHODS:
        raise LaunchError(
            f"{path} is the native FP8/FP4 checkpoint (quant_method={method!r}), which needs sm_90+; "
            f"{arch} has no FP8/FP4 tensor cores. Requantize it once: "
            f"sglang-ampere convert {shlex.quote(str(p))} DST, then launch with --model-path DST")
    raise LaunchError(
        f"{cfg_file}: quantization_config.quant_method is {method!r}, expected {QUANT_METHOD!r}. "
        "Make a dsv4_int checkpoint with: sglang-ampere convert SRC DST")
