"""Shared helpers for the launcher/doctor tests: recorded nvidia-smi outputs, model dirs."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

from sglang_ampere.safetensors_io import OutTensor, build_header

from . import PY, REPO

__all__ = ["DATA", "PY", "REPO", "dry_run", "fake_nvidia_smi", "make_model", "make_native_shard", "smi"]

DATA = REPO / "tests" / "data" / "nvidia_smi"


def smi(name: str) -> str:
    """A recorded nvidia-smi output, e.g. smi("rtx3090_x12")."""
    return (DATA / f"{name}.txt").read_text()


def make_model(root: Path, quant_method: str | None = "dsv4_int", name: str = "model") -> Path:
    d = root / name
    d.mkdir(parents=True, exist_ok=True)
    cfg = {"architectures": ["DeepseekV4ForCausalLM"], "model_type": "deepseek_v4"}
    if quant_method is not None:
        cfg["quantization_config"] = {"quant_method": quant_method}
    (d / "config.json").write_text(json.dumps(cfg))
    return d


def make_native_shard(root: Path, expert_dtype: str, name: str = "native") -> Path:
    """A native (quant_method fp8) model folder whose one shard holds a single routed-expert
    weight of ``expert_dtype``, a ``[2, 4]`` tensor of non-zero bytes."""
    d = make_model(root, "fp8", name)
    weight = OutTensor("layers.0.ffn.experts.0.w1.weight", expert_dtype, (2, 4))
    data = bytes(i % 251 + 1 for i in range(weight.nbytes))
    (d / "model-00001-of-00001.safetensors").write_bytes(build_header([weight]) + data)
    return d


def fake_nvidia_smi(root: Path, recorded: str | None, fail: bool = False) -> dict[str, str]:
    """An environment whose PATH has an `nvidia-smi` printing a recorded output (or failing)."""
    bindir = root / "fakebin"
    bindir.mkdir(parents=True, exist_ok=True)
    exe = bindir / "nvidia-smi"
    if fail:
        exe.write_text("#!/bin/sh\necho 'NVIDIA-SMI has failed because it could not communicate with the "
                       "NVIDIA driver.' >&2\nexit 9\n")
    else:
        (bindir / "smi.txt").write_text(smi(recorded) if recorded else "")
        exe.write_text(f"#!/bin/sh\ncat '{bindir / 'smi.txt'}'\n")
    exe.chmod(exe.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SGLANG_", "CUDA_VISIBLE"))}
    env["PATH"] = f"{bindir}{os.pathsep}{os.path.dirname(PY)}{os.pathsep}{env.get('PATH', '')}"
    return env


def dry_run(model: Path, environ: dict, *args: str, gpu: str = "sm86"):
    """``launch --gpu GPU --dry-run --model-path MODEL ARGS...`` as the launch spec, with no GPU
    here (the memory plan then uses the preset's card size)."""
    from sglang_ampere.launch.launcher import build_spec

    return build_spec(["--gpu", gpu, "--dry-run", "--model-path", str(model), *args], environ=environ,
                      smi_output="")
