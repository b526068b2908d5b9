"""DeepSeek-V4's RoPE tables sized to the positions the server can address, not to 1M.

Target:   ``sglang.srt.models.deepseek_v4.MqaAttentionBase.__init__`` and
          ``sglang.srt.models.deepseek_v4.MQALayer.__init__`` (the scope), and, inside that scope
          only, ``sglang.kernels.ops.attention.dsv4.rope.precompute_freqs_cis``,
          ``sglang.kernels.ops.attention.dsv4.rope.precompute_cos_sin_table``,
          ``sglang.srt.models.deepseek_v4.get_rope_wrapper`` and
          ``sglang.srt.layers.rotary_embedding.rope_variant.DeepseekScalingRotaryEmbedding._compute_cos_sin_cache``
Hook:     AROUND, all six, on every arch. The two ``__init__`` hooks run the original with
          :func:`served_rows` of the layer's config pushed on a stack; the four table builders run the
          original unchanged when the stack is empty (any other model, or a DeepSeek-V4 config whose
          served length is not below ``max_position_embeddings``).
Why:      Every attention layer registers a complex64 ``freqs_cis`` (``precompute_freqs_cis`` with
          ``seqlen=config.max_position_embeddings``, ``deepseek_v4.py`` ~1189-1200) and builds a
          rotary embedding whose BF16 ``cos_sin_cache`` has ``max_position_embeddings`` rows (plain
          RoPE, window layers) or ``original_max_position_embeddings x factor`` rows (YaRN, compressed
          layers; ``rope_variant.py`` ~406-412), ~1395-1403: one pair per RoPE kind, shared by the
          layers of that kind (``lru_cache`` / ``_ROPE_DICT``), 384 MiB per kind at the release's
          1,048,576 positions whatever ``--context-length`` is. No position at or past
          ``context_len + speculative positions`` is ever read:
          * readers: ``layer.freqs_cis[positions]`` in the backend (``deepseek_v4_backend.py`` 318,
            3678, 3844, 3966, 4016), the compressor and indexer (handed the same tensor:
            ``compressor.py`` 86/197, ``compressor_v2.py`` 235/323, ``indexer.py`` 1215/1240), the
            fused q/kv norm-RoPE kernels (``deepseek_v4.py`` 1798-1886, 2528, 2923-2969), the DSpark
            drafter (``deepseek_v4_dspark.py`` 365); the rotary's ``cos_sin_cache`` is read only on NPU
            (``rope_cos_sin``) and by V4.1's mega path (``precompute_cos_sin_table``);
          * positions: a prompt is refused at ``max_req_input_len = context_len - 6`` tokens
            (``managers/utils.py`` ``validate_input_length``; ``tp_worker.py`` ~568-572), and
            ``max_new_tokens`` is cut to ``max_req_len - input_len - 1`` with ``max_req_len =
            context_len - 1`` (``scheduler.py`` ``init_req_max_new_tokens`` ~2709-2716), so a target
            forward reads positions below ``context_len``; speculative decoding reads up to the draft
            tokens (verify) and the draft steps past the last one.
          So both tables get :func:`served_rows` = ``context_len`` (``ModelConfig`` copies it to the
          HF config SGLang passes the layers, ``model_config.py`` ~1329) + the largest draft-token
          count + the draft steps, capped at the original size. The values are SGLang's own: the
          builders run unchanged with fewer rows (``seqlen`` only sets ``torch.arange``'s length in
          ``precompute_freqs_cis``; the YaRN rotary computes its inverse frequencies from its own
          attributes first, then only ``t`` is shortened), so row i is bit for bit SGLang's row i.
SGLang:   written for 0.5.23 (file:line above).
"""

from __future__ import annotations

import contextlib
import logging

from . import Hook

logger = logging.getLogger("sglang_ampere.patches.dsv4_rope")

DSV4 = "sglang.srt.models.deepseek_v4"
ROPE = "sglang.kernels.ops.attention.dsv4.rope"
YARN = "sglang.srt.layers.rotary_embedding.rope_variant.DeepseekScalingRotaryEmbedding"
SCOPES = (f"{DSV4}.MqaAttentionBase.__init__", f"{DSV4}.MQALayer.__init__")
FREQS = f"{ROPE}.precompute_freqs_cis"
COS_SIN = f"{ROPE}.precompute_cos_sin_table"
ROPE_WRAPPER = f"{DSV4}.get_rope_wrapper"
YARN_CACHE = f"{YARN}._compute_cos_sin_cache"

#: Rows of the layer being built (innermost last); empty outside a DeepSeek-V4 attention __init__.
_ROWS: list[int | None] = []


def speculative_counts() -> tuple[int, int]:
    """(the largest draft-token count, the draft steps) of this server (``runtime_context``; 0, 0
    without speculative decoding)."""
    from sglang.srt.runtime_context import get_spec, max_speculative_num_draft_tokens

    return int(max_speculative_num_draft_tokens() or 0), int(get_spec().speculative_num_steps or 0)


def served_rows(config) -> int | None:
    """RoPE rows the server can address for this HF config (:func:`sglang_ampere.memory_plan.served_rope_rows`),
    or None to keep SGLang's size."""
    from sglang_ampere.memory_plan import served_rope_rows

    full = int(config.max_position_embeddings)
    context = getattr(config, "context_len", None)
    if not context:
        return None
    rows = served_rope_rows(full, int(context), *speculative_counts())
    return rows if rows < full else None


@contextlib.contextmanager
def rows_scope(rows: int | None):
    _ROWS.append(rows)
    try:
        yield
    finally:
        _ROWS.pop()


def current_rows() -> int | None:
    return _ROWS[-1] if _ROWS else None


def attention_init_hook(original, self, *args, **kwargs):
    config = args[0] if args else kwargs["config"]
    with rows_scope(served_rows(config)):
        return original(self, *args, **kwargs)


def _table_hook(original, dim, seqlen, *args, **kwargs):
    rows = current_rows()
    return original(dim, seqlen if rows is None else min(seqlen, rows), *args, **kwargs)


def freqs_cis_hook(original, *args, **kwargs):
    return _table_hook(original, *args, **kwargs)


def cos_sin_table_hook(original, *args, **kwargs):
    return _table_hook(original, *args, **kwargs)


#: A ``rope_scaling`` key the factory ignores (it takes only the YaRN keys it knows) but puts in its
#: ``_ROPE_DICT`` cache key, so a YaRN rotary of one served length is never reused for another.
ROWS_KEY = "sglang_ampere_rope_rows"


def rope_wrapper_hook(original, head_size, rotary_dim, max_position, *args, **kwargs):
    """Plain RoPE (no ``rope_scaling``): its rows are ``max_position``. A YaRN rotary's rows are set
    by its scaling (:func:`yarn_cache_hook`), and ``max_position`` may feed its frequencies, so it
    stays; the served rows join its cache key."""
    rows = current_rows()
    if rows is None:
        return original(head_size, rotary_dim, max_position, *args, **kwargs)
    scaling = kwargs.get("rope_scaling", args[2] if len(args) > 2 else None)
    if scaling is None:
        max_position = min(max_position, rows)
    elif "rope_scaling" in kwargs:
        kwargs["rope_scaling"] = {**scaling, ROWS_KEY: rows}
    else:
        args = (*args[:2], {**scaling, ROWS_KEY: rows}, *args[3:])
    return original(head_size, rotary_dim, max_position, *args, **kwargs)


def yarn_cache_hook(original, self):
    rows = current_rows()
    full = self.max_position_embeddings * self.scaling_factor
    if rows is None or rows >= full:
        return original(self)
    inv_freq = self._compute_inv_freq(self.scaling_factor)      # from the real attributes
    saved = self.max_position_embeddings, self.scaling_factor
    self._compute_inv_freq = lambda _factor: inv_freq
    self.max_position_embeddings, self.scaling_factor = rows, 1   # only t = arange(rows) changes
    try:
        return original(self)
    finally:
        del self._compute_inv_freq
        self.max_position_embeddings, self.scaling_factor = saved


def hooks() -> list[Hook]:
    why = "DeepSeek-V4 RoPE tables sized to the served context (+ speculative positions), not 1M rows"
    return [Hook(t, attention_init_hook, "AROUND", why) for t in SCOPES] + [
        Hook(FREQS, freqs_cis_hook, "AROUND", why),
        Hook(COS_SIN, cos_sin_table_hook, "AROUND", why),
        Hook(ROPE_WRAPPER, rope_wrapper_hook, "AROUND", why),
        Hook(YARN_CACHE, yarn_cache_hook, "AROUND", why),
    ]
