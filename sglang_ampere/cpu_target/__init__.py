"""The CPU target: SGLang 0.5.23's real DeepSeek-V4 server on a machine without a GPU.

``sglang-ampere launch --gpu cpu -- --model-path DIR`` starts ``python -m sglang.launch_server``
with SGLang's own CPU engine (``SGLANG_USE_CPU_ENGINE=1``) and the preset ``env/cpu.toml``. The
whole product then runs for real -- launcher, plugin, patches, SGLang's scheduler, KV pools,
attention backend and ``DeepseekV4ForCausalLM.forward``, OpenAI server -- with torch stand-ins
for the ops SGLang only has as CUDA/Triton/TileLang kernels. It is how CI proves the serving
path, and how a user tries sglang-ampere without a GPU; it is slow and not for production.

What makes it go, and where each piece lives:

* :data:`SITE_DIR` (``site/sitecustomize.py``): put on ``PYTHONPATH`` by the launcher for this
  target only. It makes ``import sgl_kernel`` give :mod:`.sgl_kernel_stub` in every server process:
  SGLang's memory-pool modules import CPU ops from the CPU build of sgl-kernel at module level,
  before any plugin runs, and the installed CUDA build cannot load without a driver.
* ``patches/cpu_engine.py``: the CPU engine's gates that assume Intel AMX (FP8 KV cache, FP8
  linear), the RoPE factory, NCCL beside gloo, the MTP hand-over's device module;
* ``patches/cpu_ops.py``: the torch stand-ins (``kernels/dsv4_ops_torch.py``,
  ``kernels/dsv4_compress_torch.py``) bound in place of every CUDA-only op on the forward path;
  ``patches/cpu_spec.py``: the same for MTP speculative decoding's bookkeeping kernels.
* ``patches/dsv4_attention.py`` / ``dsv4_indexer.py``: the same hooks as on Ampere, so the torch
  sparse MLA and indexer paths of this package serve attention here too.

Everything here is taken only when asked for (:func:`requested`) and only without CUDA
(:func:`active`): nothing changes for a GPU user.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping

from .. import envvars, gpus

#: The folder holding the boot ``sitecustomize.py`` (prepended to ``PYTHONPATH`` by the launcher).
SITE_DIR = Path(__file__).resolve().parent / "site"
def requested(environ: Mapping[str, str] | None = None) -> bool:
    """``SGLANG_AMPERE_TARGET=cpu`` (set by ``launch --gpu cpu``)."""
    return gpus.cpu_target(environ)


def problem(environ: Mapping[str, str] | None = None, cuda_available: bool | None = None) -> str | None:
    """Why the requested CPU target cannot be taken in this process, or None when it can (or is
    not requested). ``cuda_available`` None asks torch."""
    env = os.environ if environ is None else environ
    if not requested(env):
        return None
    if env.get(envvars.SGLANG_USE_CPU_ENGINE) != "1":
        return (f"{envvars.TARGET}=cpu needs SGLang's CPU engine ({envvars.SGLANG_USE_CPU_ENGINE}=1); start the "
                "server with `sglang-ampere launch --gpu cpu`, which sets both")
    if cuda_available is None:
        import torch

        cuda_available = torch.cuda.is_available()
    if cuda_available:
        return (f"{envvars.TARGET}=cpu is for machines without a GPU, but CUDA is available here; unset it "
                "(the CPU stand-ins never replace CUDA kernels)")
    return None


def active(environ: Mapping[str, str] | None = None) -> bool:
    """The CPU target is requested and can be taken (no CUDA in this process)."""
    return requested(environ) and problem(environ) is None


def pythonpath(existing: str | None) -> str:
    """``PYTHONPATH`` with :data:`SITE_DIR` first (once)."""
    parts = [p for p in (existing or "").split(os.pathsep) if p and Path(p).resolve() != SITE_DIR]
    return os.pathsep.join([str(SITE_DIR), *parts])
