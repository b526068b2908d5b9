"""Run SGLang 0.5.23's real DeepSeek-V4 code on a CPU-only machine (test support).

Only process-wide setup lives here: a world-1 gloo process group with SGLang's model-parallel
groups and a published runtime context (what ``sglang.test.layer_ut_utils`` does), plus the
three smallest in-process workarounds found in reference/cpu-model-load.md, each because a
piece of SGLang's construction/loading assumes an accelerator:

* O1 ``rotary_embedding.base._is_cpu = True``: on a platform that is none of cuda/cpu/xpu/...
  ``RotaryEmbedding.__init__`` imports ``vllm._custom_ops``; this only picks a forward kernel.
* O2 ``rope_variant.get_device -> "cpu"``: YaRN rope of compressed layers asks SGLang for an
  accelerator device and raises without one.
* O3 ``SGLANG_OPT_USE_TILELANG_MHC_PRE=0``: ``load_weights`` ends by pre-warming TileLang mHC
  kernels through ``torch.cuda``; the knob's own guard skips that (it only picks forward kernels).
  It stays set for the rest of the process (``helpers.environment.PROCESS_VARS``).

No SGLang class is mocked.
"""

from __future__ import annotations

import contextlib
import os
import socket

from .environment import sglang_vars_restored

_READY = False


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_sglang_cpu() -> None:
    """Idempotent; call before building any SGLang layer in this process."""
    global _READY
    if _READY:
        return
    os.environ.setdefault("SGLANG_OPT_USE_TILELANG_MHC_PRE", "0")          # O3
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()), RANK="0",
                      WORLD_SIZE="1", LOCAL_RANK="0")
    import sglang.srt.layers.rotary_embedding.base as rope_base
    import sglang.srt.layers.rotary_embedding.rope_variant as rope_variant
    from sglang.srt.distributed import parallel_state
    from sglang.srt.distributed.parallel_state import (
        init_distributed_environment,
        initialize_model_parallel,
        model_parallel_is_initialized,
    )
    from sglang.srt.environ import envs
    from sglang.srt.runtime_context import SpawnRanks, get_parallel, publish, reset_context
    from sglang.srt.server_args import ServerArgs

    rope_base._is_cpu = True                                                # O1
    rope_variant.get_device = lambda *a, **k: "cpu"                         # O2
    envs.SGLANG_OPT_USE_TILELANG_MHC_PRE.set(False)                         # O3

    import torch

    if not torch.distributed.is_initialized():
        init_distributed_environment(world_size=1, rank=0, local_rank=0, backend="gloo")
    if not model_parallel_is_initialized():
        reset_context()
        publish(ServerArgs(model_path="dummy", tp_size=1, ep_size=1, pp_size=1), role="test",
                ranks=SpawnRanks(world_rank=0))
        if parallel_state._WORLD is not None:
            get_parallel().override_permanently(world_group=parallel_state._WORLD)
        initialize_model_parallel(backend="gloo")
    _READY = True


@contextlib.contextmanager
def scratch_runtime_context():
    """A fresh SGLang runtime context for a block that publishes its own ServerArgs.

    SGLang's ``use_context`` puts the previous context (the one :func:`init_sglang_cpu`
    published, with its process groups) back by identity when the block ends, so the tests
    that run afterwards in the same process still find it; the ``SGLANG_*`` variables a
    ``ServerArgs`` exports are undone too.
    """
    from sglang.srt.runtime_context import ParallelContext, RuntimeContext, use_context

    with sglang_vars_restored(), use_context(RuntimeContext(ParallelContext())) as ctx:
        yield ctx
