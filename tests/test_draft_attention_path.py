"""The MTP draft's attention goes through sglang-ampere's Ampere path, like the target's.

SGLang 0.5.23 builds the EAGLE draft's DeepSeek-V4 backends in ``speculative/draft_utils.py``:
decode through ``create_deepseek_v4_multistep_backend`` (a ``DeepseekV4MultiStepBackend``, whose
own ``__init__`` and every per-step backend go through ``DeepseekV4AttnBackend.__init__``), draft
extend through ``create_deepseek_v4_attn_backend``. In a fresh process the hooks are registered
through SGLang's own HookRegistry, only the body of the original ``__init__`` is replaced by a
recorder (there is no model runner here), and SGLang's real draft factory methods are called:
every backend they build must carry the rebound sparse-MLA call.
"""

from __future__ import annotations

import pytest
from helpers import run_with_sglang

from sglang_ampere import envvars

_SUBPROCESS = r"""
import json, types
from sglang.srt.plugins.hook_registry import HookRegistry, HookType
import sglang.srt.layers.attention.deepseek_v4_backend as BE
from sglang_ampere.patches import dsv4_attention as D
D.needs_ampere_path = lambda: True
D.ensure_flash_mla_interface = lambda: True
D.precompile_tilelang = lambda: 0
built = []
def recorder(self, model_runner, *args, **kwargs):    # the original body needs a model runner
    built.append(type(self).__name__)
BE.DeepseekV4AttnBackend.__init__ = recorder
for h in D.hooks():
    HookRegistry.register(h.target, h.fn, getattr(HookType, h.hook_type))
HookRegistry.apply_hooks()
from sglang.srt.runtime_context import SpawnRanks, publish
from sglang.srt.server_args import ServerArgs
publish(ServerArgs(model_path="dummy"), role="test", ranks=SpawnRanks(world_rank=0))   # default --dsv4-attn-backend
from sglang.srt.speculative.draft_utils import DraftBackendFactory
factory = types.SimpleNamespace(draft_model_runner=None, topk=1, speculative_num_steps=3)
res = {}
name, multi = DraftBackendFactory._create_dsv4_decode_backend(factory)
res["decode"] = [name, type(multi).__name__, D.is_applied(multi), [D.is_applied(b) for b in multi.attn_backends],
                 [type(b).__name__ for b in multi.attn_backends]]
name, extend = DraftBackendFactory._create_dsv4_prefill_backend(factory)
res["extend"] = [name, type(extend).__name__, D.is_applied(extend)]
res["built"] = built
print("RESULT" + json.dumps(res))
"""


@pytest.mark.slow
def test_mtp_draft_backends_are_hooked():
    res = run_with_sglang(_SUBPROCESS, {envvars.DECODE_BACKEND: "torch"})
    name, cls, applied, steps, step_classes = res["decode"]
    assert name == "dsv4" and cls == "DeepseekV4MultiStepBackend" and applied, (
        f"draft decode backend {cls} ({name}) hooked={applied}")
    assert steps == [True, True, True] and set(step_classes) == {"DeepseekV4AttnBackend"}, (
        f"per-step draft backends {step_classes} hooked={steps}")
    name, cls, applied = res["extend"]
    assert name == "dsv4" and cls == "DeepseekV4AttnBackend" and applied, (
        f"draft extend backend {cls} hooked={applied}")
    assert len(res["built"]) == 5, f"every backend ran the (recorded) original __init__: {res['built']}"
