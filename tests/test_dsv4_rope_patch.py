"""patches/dsv4_rope.py: SGLang 0.5.23's real DeepSeek-V4 model built on CPU with the plugin holds
RoPE tables of the served length, bit for bit SGLang's own first rows, and SGLang's own length
checks keep every position a forward reads inside them.

The model is the synthetic checkpoint with the tests' small RoPE (``SMALL_ROPE``: 4,096 positions,
YaRN from 1,024 x 4, so both kinds' tables are 4,096 rows unpatched) served at 1,000 tokens.
"""

from __future__ import annotations

import types

import pytest
import torch

pytest.importorskip("sglang")

from helpers.dsv4int import SMALL_ROPE, init_model
from helpers.sglang_cpu import init_sglang_cpu

from sglang_ampere import memory_plan as plan_mod

CONTEXT = 1000


@pytest.fixture(scope="module")
def plugin():
    init_sglang_cpu()
    from sglang_ampere import plugin

    plugin.register()
    assert plugin.verify_hooks() == []
    return plugin


def _build(path, context_length):
    model, mc, _ = init_model(path, context_length=context_length)
    return model, mc


def _attention_layers(model):
    return [m for n, m in model.named_modules() if type(m).__name__ == "MQALayer"]


def _sglang_rotary(layer, config):
    """SGLang's own rotary for this layer (its factory, outside the patch's scope, cache bypassed)."""
    from sglang.srt.layers.rotary_embedding import factory
    from sglang.srt.models.deepseek_v4 import get_rope_wrapper
    from sglang.srt.runtime_context import get_device

    scaling = None
    if layer.compress_ratio:
        scaling = dict(layer.rope_scaling or {}, rope_type="deepseek_yarn")
    saved = dict(factory._ROPE_DICT)
    factory._ROPE_DICT.clear()
    try:
        with torch.device("cpu"):
            torch.set_default_dtype(torch.bfloat16)
            try:
                return get_rope_wrapper(head_size=layer.rope_head_dim, rotary_dim=layer.rope_head_dim,
                                        max_position=config.max_position_embeddings, base=layer.rope_base,
                                        rope_scaling=scaling, is_neox_style=False,
                                        device=get_device().device)
            finally:
                torch.set_default_dtype(torch.float32)
    finally:
        factory._ROPE_DICT.clear()
        factory._ROPE_DICT.update(saved)


def test_tables_have_the_served_rows_and_sglangs_values(plugin, synth_ckpt):
    from sglang.kernels.ops.attention.dsv4 import rope

    model, mc = _build(synth_ckpt, CONTEXT)
    layers = _attention_layers(model)
    kinds = {}
    for layer in layers:
        kinds.setdefault(bool(layer.compress_ratio), []).append(layer)
    assert set(kinds) == {False, True}, "the synthetic model has window-only and compressed layers"
    measured = 0
    for compressed, group in kinds.items():
        first = group[0]
        # one pair per RoPE kind, shared by its layers (what plan counts)
        assert all(g.freqs_cis is first.freqs_cis and g.rotary_emb is first.rotary_emb for g in group)
        freqs, cache = first.freqs_cis, first.rotary_emb.cos_sin_cache
        assert freqs.shape == (CONTEXT, 32) and freqs.dtype == torch.complex64, freqs.shape
        assert cache.shape == (CONTEXT, 64) and cache.dtype == torch.bfloat16, cache.shape
        measured += freqs.numel() * freqs.element_size() + cache.numel() * cache.element_size()
        # SGLang's own tables (the builders outside the patch's scope: all 4096 rows)
        full = rope.precompute_freqs_cis(**first.rope_kwargs)
        assert full.shape[0] == SMALL_ROPE["max_position_embeddings"]
        assert torch.equal(torch.view_as_real(freqs), torch.view_as_real(full[:CONTEXT])), compressed
        theirs = _sglang_rotary(first, mc.hf_config)
        assert type(theirs) is type(first.rotary_emb) and theirs.cos_sin_cache.shape[0] == 4096
        assert torch.equal(cache, theirs.cos_sin_cache[:CONTEXT]), compressed
        # negative control: the comparison sees a table one position off
        assert not torch.equal(torch.view_as_real(freqs), torch.view_as_real(full[1:CONTEXT + 1]))
    model_plan = types.SimpleNamespace(config={"max_position_embeddings": 4096, "qk_rope_head_dim": 64})
    settings = plan_mod.Settings(context_length=CONTEXT)
    rows = plan_mod.rope_rows(model_plan, settings)
    assert rows == CONTEXT and measured == 2 * plan_mod.Model.rope_kind_bytes(model_plan, rows)


def test_unpatched_length_when_the_context_is_the_full_table(plugin, synth_ckpt):
    """Negative control: served at SGLang's own length, the tables keep SGLang's 4096 rows."""
    model, _ = _build(synth_ckpt, None)
    for layer in _attention_layers(model):
        assert layer.freqs_cis.shape[0] == 4096 and layer.rotary_emb.cos_sin_cache.shape[0] == 4096


def test_speculative_positions_are_added(plugin):
    from sglang.srt.runtime_context import get_spec

    from sglang_ampere.patches import dsv4_rope

    cfg = types.SimpleNamespace(max_position_embeddings=4096, context_len=CONTEXT)
    assert dsv4_rope.served_rows(cfg) == CONTEXT
    with get_spec().override(speculative_num_draft_tokens=4, speculative_num_steps=3):
        assert dsv4_rope.served_rows(cfg) == CONTEXT + 4 + 3
        s = plan_mod.Settings(context_length=CONTEXT, speculative="mtp")
        assert plan_mod.rope_rows(types.SimpleNamespace(config={"max_position_embeddings": 4096}), s) == CONTEXT + 7
    assert dsv4_rope.served_rows(types.SimpleNamespace(max_position_embeddings=4096, context_len=4096)) is None


def test_positions_past_the_table_are_refused_by_sglangs_length_checks(plugin):
    """The worker's limits (``get_worker_info``), the prompt check (``validate_input_length``) and the
    max_new_tokens cut (``init_req_max_new_tokens``), SGLang's own, with a pool that is not the limit:
    the longest prompt SGLang accepts, generating as long as SGLang lets it, feeds positions below the
    served context; one token more is refused before any forward."""
    from sglang.srt.managers.scheduler import Scheduler
    from sglang.srt.managers.tp_worker import TpModelWorker
    from sglang.srt.managers.utils import validate_input_length

    worker = types.SimpleNamespace(
        model_runner=types.SimpleNamespace(effective_logical_max_total_num_tokens=1 << 20,
                                           logical_max_total_num_tokens=1 << 20, max_running_requests=4,
                                           token_to_kv_pool_allocator=None, forward_stream=None,
                                           req_to_token_pool=types.SimpleNamespace(size=4, max_context_len=CONTEXT),
                                           token_to_kv_pool=types.SimpleNamespace(size=1 << 20)),
        model_config=types.SimpleNamespace(context_len=CONTEXT), dllm_algorithm=None, random_seed=0, device="cpu")
    info = TpModelWorker.get_worker_info(worker)
    max_req_len, max_req_input_len = info[4], info[5]

    def request(n_input, max_new=None):
        return types.SimpleNamespace(origin_input_ids=list(range(n_input)), rid="r", finished=None,
                                     sampling_params=types.SimpleNamespace(max_new_tokens=max_new, min_new_tokens=0),
                                     set_finish_with_abort=lambda msg: None)

    longest = request(max_req_input_len - 1)
    assert validate_input_length(longest, max_req_input_len, False) is None
    assert "exceeds the maximum allowed length" in validate_input_length(request(max_req_input_len),
                                                                         max_req_input_len, False)
    sched = types.SimpleNamespace(
        max_new_tokens_limit=None, max_req_len=max_req_len, max_total_num_tokens=1 << 20, kv_shard_widening=1,
        page_size=256, sliding_window_size=128, chunked_prefill_size=256,
        token_to_kv_pool_allocator=types.SimpleNamespace(max_new_tokens_for_memory=lambda i, m, **k: m))
    Scheduler.init_req_max_new_tokens(sched, longest)
    last_position = len(longest.origin_input_ids) + longest.sampling_params.max_new_tokens - 1
    assert longest.sampling_params.max_new_tokens > 0 and last_position < CONTEXT, last_position
    # with speculation the verify pass and the draft steps read past it, which the rows include
    assert last_position + 4 + 3 < plan_mod.served_rope_rows(4096, CONTEXT, 4, 3)
    # negative control: a position past the table is an error, not a silent read (on CPU)
    table = torch.zeros(CONTEXT, 32, dtype=torch.complex64)
    with pytest.raises(IndexError):
        table[torch.tensor([CONTEXT])]
