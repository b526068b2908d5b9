"""The CPU target: torch stand-ins bound in place of every CUDA-only op on DeepSeek-V4's forward.

Target:   the SGLang kernel entry points in :data:`STANDINS` (``sglang.kernels.ops...``): RoPE and
          norm+RoPE (``attention.dsv4.norm_rope``), the paged FP8 stores (``attention.dsv4.attn``),
          the compression metadata (``attention.dsv4.metadata_kernel``), the compressor's planner,
          pooling and store (``attention.dsv4.compress``), mHC (``layernorm.mhc``,
          ``layernorm.mhc_head``) and the clamped SwiGLU (``activation.silu_and_mul_clamp``).
Hook:     REPLACE, each on the function's defining module. SGLang's registry then also rebinds
          every ``from X import f`` copy already imported (``hook_registry._propagate_patch``),
          which is how ``deepseek_v4.fused_q_norm_rope`` or the backend's
          ``_init_compression_metadata_triton`` alias are reached. Registered only on the CPU
          target without CUDA (:func:`sglang_ampere.cpu_target.active`); elsewhere :func:`hooks`
          returns no hook, so on a GPU SGLang's kernels are untouched.
Why:      These ops exist in SGLang 0.5.23 only as CUDA JIT, Triton or TileLang kernels, which
          cannot run without a GPU (``reference/cpu-serving.md`` lists each with its call site).
          The stand-ins are pure torch functions written from those kernels' sources
          (:mod:`sglang_ampere.kernels.dsv4_ops_torch`, :mod:`sglang_ampere.kernels.dsv4_compress_torch`,
          each naming its source file:line), so the rest of SGLang -- its attention backend,
          metadata, KV pools and compress-state pool, radix cache -- runs unchanged on CPU. On a
          card, ``selftest`` compares each stand-in with the kernel it replaces
          (:mod:`sglang_ampere.kernels.dsv4_ops_selfchecks`).
          The planner wrappers here only wrap the plan tensors in SGLang's NamedTuples; the online
          c128 compressor (``SGLANG_OPT_USE_ONLINE_COMPRESS``) is refused with a clear error.
SGLang:   written for 0.5.23 (``kernels/ops/attention/dsv4/norm_rope.py`` 142-320, ``attn.py`` ~75,
          ``metadata_kernel.py`` ~245, ``compress.py`` 157-470, ``layernorm/mhc.py`` 427 and 2743,
          ``layernorm/mhc_head.py`` 90, ``activation/silu_and_mul_clamp.py`` 57).
"""

from __future__ import annotations

import importlib

from . import Hook

K = "sglang.kernels.ops"
COMPRESS = f"{K}.attention.dsv4.compress"


# --- the compressor: SGLang's plan NamedTuples around the pure functions -------------------------

def plan_prefill(compress_ratio, req_pool_indices, seq_lens, extend_lens, req_to_token, full_to_state,
                 swa_page_size, ring_size, num_q_tokens, use_cuda_graph=False, use_req_ring=False):
    """``CompressorPrefillPlan.generate`` (``compress.py`` ~254)."""
    from sglang_ampere.kernels import dsv4_compress_torch as C

    plan_cls = importlib.import_module(COMPRESS).CompressorPrefillPlan
    plan_c, plan_w = C.plan_prefill(compress_ratio, req_pool_indices, seq_lens, extend_lens, req_to_token,
                                    full_to_state, swa_page_size, ring_size, num_q_tokens,
                                    use_cuda_graph=use_cuda_graph, use_req_ring=use_req_ring)
    return plan_cls(int(compress_ratio), plan_c, plan_w, None)


def plan_decode(compress_ratio, req_pool_indices, req_to_token, full_to_state, seq_lens, swa_page_size,
                ring_size, use_req_ring=False):
    """``CompressorDecodePlan.generate`` (``compress.py`` ~167)."""
    from sglang_ampere.kernels import dsv4_compress_torch as C

    plan_cls = importlib.import_module(COMPRESS).CompressorDecodePlan
    plan_d = C.plan_decode(compress_ratio, req_pool_indices, req_to_token, full_to_state, seq_lens,
                           swa_page_size, ring_size, use_req_ring=use_req_ring)
    return plan_cls(int(compress_ratio), plan_d)


def _ops(name: str, module: str = "dsv4_ops_torch"):
    """The stand-in ``name`` of ``sglang_ampere.kernels.<module>``, looked up at call time."""
    def standin(*args, **kwargs):
        return getattr(importlib.import_module(f"sglang_ampere.kernels.{module}"), name)(*args, **kwargs)

    standin.__name__ = standin.__qualname__ = f"{name}_cpu_standin"
    return standin


#: (SGLang target, stand-in, what it replaces).
STANDINS: tuple = (
    (f"{K}.attention.dsv4.norm_rope.fused_q_norm_rope", _ops("fused_q_norm_rope"), "q RMSNorm + RoPE (CUDA JIT)"),
    (f"{K}.attention.dsv4.norm_rope.fused_rope_inplace", _ops("fused_rope_inplace"), "RoPE in place (CUDA JIT)"),
    (f"{K}.attention.dsv4.norm_rope.fused_k_norm_rope_flashmla", _ops("fused_k_norm_rope_flashmla"),
     "kv RMSNorm + RoPE + FP8 store into the SWA cache (CUDA JIT)"),
    (f"{K}.attention.dsv4.norm_rope.fused_q_indexer_rope_hadamard_quant",
     _ops("fused_q_indexer_rope_hadamard_quant"), "indexer query RoPE + Hadamard + FP8 (CUDA JIT)"),
    (f"{K}.attention.dsv4.attn.fused_store_cache", _ops("fused_store_cache"), "paged FP8 cache store (CUDA JIT)"),
    (f"{K}.attention.dsv4.metadata_kernel.init_compression_metadata", _ops("init_compression_metadata"),
     "c4/c128 compression metadata (Triton)"),
    (f"{K}.layernorm.mhc.hc_split_sinkhorn", _ops("hc_split_sinkhorn"), "mHC Sinkhorn split (TileLang)"),
    (f"{K}.layernorm.mhc.mhc_combine", _ops("mhc_combine"), "mHC combine (Triton)"),
    (f"{K}.layernorm.mhc_head.fused_hc_head", _ops("fused_hc_head"), "mHC head (Triton)"),
    (f"{K}.activation.silu_and_mul_clamp.silu_and_mul_clamp", _ops("silu_and_mul_clamp"),
     "shared-expert SwiGLU with clamp (CUDA JIT)"),
    (f"{COMPRESS}.CompressorPrefillPlan.generate", plan_prefill, "compressor prefill planner (CUDA JIT)"),
    (f"{COMPRESS}.CompressorDecodePlan.generate", plan_decode, "compressor decode planner (CUDA JIT)"),
    (f"{COMPRESS}.compress_forward", _ops("compress_forward_for_plan", "dsv4_compress_torch"),
     "compressor pooling over the state pool (CUDA JIT)"),
    (f"{COMPRESS}.compress_norm_rope_store", _ops("compress_norm_rope_store_for_plan", "dsv4_compress_torch"),
     "compressed rows: RMSNorm + RoPE + FP8 store (CUDA JIT)"),
)


def hooks() -> list[Hook]:
    from sglang_ampere import cpu_target

    if not cpu_target.active():
        return []
    for target, _, _ in STANDINS:
        importlib.import_module(target.rsplit(".", 2 if ".Compressor" in target else 1)[0])
    return [Hook(target, fn, "REPLACE", f"CPU target: torch stand-in for the {what}")
            for target, fn, what in STANDINS]
