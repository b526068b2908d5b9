"""Torch implementations of the speculative-decoding ops SGLang 0.5.23 reaches on its CPU engine
with MTP (EAGLE, top-k 1), for sglang-ampere's CPU target.

Two kinds:

* ``*_cpu``: the operators SGLang imports from the CPU build of sgl-kernel when
  ``SGLANG_USE_CPU_ENGINE=1`` (not on PyPI; :mod:`sglang_ampere.cpu_target.sgl_kernel_stub` binds
  these). Each follows the Triton kernel SGLang launches on a GPU for the same call (named in its
  docstring, file:line in ``sglang/kernels/ops/speculative/``), with the arguments of the CPU call.
* :func:`draft_topk1_postprocess`, :func:`row_argmax`: the top-1 draft argmax, whose launchers run
  Triton kernels unconditionally; bound by ``patches/cpu_spec.py``.

The tests run each against SGLang's own Triton kernel executed by Triton's interpreter on the same
inputs (``tests/test_spec_ops_torch.py``).
"""

from __future__ import annotations

import torch


def fill_bonus_tokens_cpu(accept_tokens: torch.Tensor, accept_lens: torch.Tensor, bonus_tokens: torch.Tensor,
                          accept_stride: int) -> None:
    """``bonus_tokens[i] = accept_tokens.flat[accept_stride * i + accept_lens[i] - 1]``, in place:
    the last accepted token of each request (``accept_lens`` counts the bonus token).

    Mirrors ``eagle.py`` ``fill_bonus_tokens`` (Triton, ~14-29; launched at ~48 with one program
    per request).
    """
    bs = bonus_tokens.numel()
    if bs == 0:
        return
    rows = torch.arange(bs, device=accept_lens.device, dtype=torch.int64)
    idx = accept_stride * rows + accept_lens[:bs].to(torch.int64) - 1
    bonus_tokens.copy_(accept_tokens.reshape(-1)[idx].to(bonus_tokens.dtype))


def fill_accept_out_cache_loc_cpu(accept_index: torch.Tensor, out_cache_loc: torch.Tensor,
                                  accept_out_cache_loc: torch.Tensor) -> None:
    """Compact the KV slots of the accepted draft tokens, in place: walking ``accept_index`` in
    order, each entry ``src > -1`` writes ``out_cache_loc[src]`` to the next free position of
    ``accept_out_cache_loc`` (position = the number of entries != -1 before it).

    Mirrors ``eagle.py`` ``fill_accept_out_cache_loc`` (Triton, ~56-69; one program per entry of
    ``accept_index``, launched at ~87 with ``size = accept_index.numel()``).
    """
    flat = accept_index.reshape(-1)
    keep = flat != -1
    src = flat[keep].to(torch.int64)
    if src.numel() == 0:
        return
    if bool((src < 0).any()):
        raise ValueError("fill_accept_out_cache_loc_cpu: accept_index holds negative entries other than -1")
    accept_out_cache_loc[: src.numel()] = out_cache_loc.reshape(-1)[src].to(accept_out_cache_loc.dtype)


def assign_draft_cache_locs_contiguous_cpu(req_pool_indices: torch.Tensor, req_to_token: torch.Tensor,
                                           seq_lens: torch.Tensor, out_cache_loc: torch.Tensor, pool_len: int,
                                           topk: int, num_cols: int) -> None:
    """``out_cache_loc[i*n : (i+1)*n] = req_to_token[req_pool_indices[i], seq_lens[i] : seq_lens[i] + n]``
    with ``n = topk * num_cols``, in place: each request's draft slots, already allocated.

    Mirrors ``cache_locs.py`` ``assign_draft_cache_locs_contiguous`` (Triton, ~43-70, without its
    position writes, which the CPU call refuses at ~98).
    """
    n = topk * num_cols
    if req_to_token.shape[1] != pool_len:
        raise ValueError(f"assign_draft_cache_locs_contiguous_cpu: pool_len {pool_len} != {req_to_token.shape[1]}")
    for i, (row, start) in enumerate(zip(req_pool_indices.tolist(), seq_lens.tolist())):
        if start + n > pool_len:
            raise ValueError(f"assign_draft_cache_locs_contiguous_cpu: slots [{start}, {start + n}) past a pool row "
                             f"of {pool_len}")
        out_cache_loc[i * n:(i + 1) * n] = req_to_token[row, start:start + n].to(out_cache_loc.dtype)


def assign_extend_cache_locs_cpu(req_pool_indices: torch.Tensor, req_to_token: torch.Tensor,
                                 start_offset: torch.Tensor, end_offset: torch.Tensor, out_cache_loc: torch.Tensor,
                                 pool_len: int) -> None:
    """``out_cache_loc[o_i : o_i + e_i - s_i] = req_to_token[req_pool_indices[i], s_i : e_i]`` with
    ``o_i = sum_{j<i} (e_j - s_j)``, in place: gather each request's slots into one flat list.

    Mirrors ``cache_locs.py`` ``assign_extend_cache_locs`` (Triton, ~500-532).
    """
    if req_to_token.shape[1] != pool_len:
        raise ValueError(f"assign_extend_cache_locs_cpu: pool_len {pool_len} != {req_to_token.shape[1]}")
    offset = 0
    for row, s, e in zip(req_pool_indices.tolist(), start_offset.tolist(), end_offset.tolist()):
        n = e - s
        if n < 0 or e > pool_len:
            raise ValueError(f"assign_extend_cache_locs_cpu: bad range [{s}, {e}) for a pool row of {pool_len}")
        out_cache_loc[offset:offset + n] = req_to_token[row, s:e].to(out_cache_loc.dtype)
        offset += n


def _argmax_rows(x: torch.Tensor) -> torch.Tensor:
    """Row argmax in float32 with NaN treated as -1e30 and ties to the lowest index, as
    ``tl.argmax`` after the kernels' ``tl.where(vals == vals, vals, -1e30)``."""
    v = x.to(torch.float32)
    v = torch.where(v == v, v, torch.full_like(v, -1e30))
    # torch.argmax returns the first maximal index on CPU, like tl.argmax (tie_break_left)
    return torch.argmax(v, dim=-1)


def draft_topk1_postprocess(next_token_logits: torch.Tensor, positions: torch.Tensor,
                            draft_tokens: torch.Tensor | None = None, draft_token_column: int = 0):
    """``topk_index[i] = argmax(logits[i])``, ``topk_p = 1``, ``positions += 1`` in place, and with
    ``draft_tokens`` also ``draft_tokens[i, draft_token_column] = topk_index[i]``. Returns
    ``(topk_p (bs, 1) float32, topk_index (bs, 1) int64)``.

    Mirrors ``topk1.py`` ``draft_topk1_postprocess`` (~75-150) and its two Triton kernels
    (``_draft_topk1_partial_argmax_kernel`` ~11, ``_draft_topk1_finalize_kernel`` ~41: a split
    argmax, NaN as -1e30, first index on ties).
    """
    if next_token_logits.ndim != 2 or positions.ndim != 1 or positions.shape[0] != next_token_logits.shape[0]:
        raise ValueError(f"draft_topk1_postprocess: logits {tuple(next_token_logits.shape)}, positions "
                         f"{tuple(positions.shape)}")
    bs = next_token_logits.shape[0]
    topk_p = torch.ones((bs, 1), dtype=torch.float32, device=next_token_logits.device)
    topk_index = torch.empty((bs, 1), dtype=torch.int64, device=next_token_logits.device)
    if bs == 0:
        return topk_p, topk_index
    topk_index[:, 0] = _argmax_rows(next_token_logits)
    if draft_tokens is not None:
        draft_tokens[:, draft_token_column] = topk_index[:, 0].to(draft_tokens.dtype)
    positions.add_(1)
    return topk_p, topk_index


def row_argmax(x: torch.Tensor) -> torch.Tensor:
    """``x.argmax(dim=-1)`` (int64) of a 2-D float32 tensor: the contract of ``row_argmax.py``
    ``row_argmax`` (~134-147; its kernels pick the first index on ties, and the medium-row path's
    ``_argmax_pair`` ~55 gives NaN priority, as torch does).
    """
    if x.ndim != 2 or x.dtype != torch.float32:
        raise ValueError(f"row_argmax: expected 2-D float32, got {tuple(x.shape)} {x.dtype}")
    return torch.argmax(x, dim=-1)


# --- ops SGLang itself implements in Triton (its XPU path), run here by Triton's interpreter ----------


def build_tree_kernel_efficient_cpu(parent_list, top_scores_index, seq_lens, tree_mask, positions, retrieve_index,
                                    retrieve_next_token, retrieve_next_sibling, topk, spec_steps, num_verify_tokens,
                                    tree_mask_mode) -> None:
    """The EAGLE draft tree (mask, positions, retrieve index / next token / next sibling), in place.

    SGLang 0.5.23 has this as Triton for XPU (``spec_tree.py`` ``sgl_build_tree_kernel_triton``
    ~318, kernel ``sgl_build_tree_kernel_efficient_triton`` ~53, called with exactly these
    arguments at ~396); here that same code runs under Triton's interpreter
    (:func:`sglang_ampere.kernels.triton_interpret.kernels_interpreted`), integers only.
    """
    from sglang.kernels.ops.speculative import spec_tree

    from .triton_interpret import kernels_interpreted

    with kernels_interpreted(spec_tree.__name__, ("sgl_build_tree_kernel_efficient_triton",)):
        spec_tree.sgl_build_tree_kernel_triton(parent_list, top_scores_index, seq_lens, tree_mask, positions,
                                               retrieve_index, retrieve_next_token, retrieve_next_sibling, topk,
                                               spec_steps, num_verify_tokens, tree_mask_mode)


def verify_tree_greedy_cpu(*, predicts, accept_index, accept_token_num, candidates, retrive_index,
                           retrive_next_token, retrive_next_sibling, target_predict) -> None:
    """Greedy verification of the draft tree against the target's argmax, in place: walks each
    request's tree from the root, accepting the child (or sibling) whose token equals the target's
    prediction at the last accepted node; writes ``predicts``, ``accept_index`` and
    ``accept_token_num``.

    SGLang 0.5.23's Triton version for XPU (``spec_tree.py`` ``verify_tree_greedy_triton`` ~447,
    kernel ``verify_tree_greedy_kernel_triton`` ~211), run under Triton's interpreter; the keyword
    names are the CPU op's (``retrive_*``, ~510).
    """
    from sglang.kernels.ops.speculative import spec_tree

    from .triton_interpret import kernels_interpreted

    with kernels_interpreted(spec_tree.__name__, ("verify_tree_greedy_kernel_triton",)):
        spec_tree.verify_tree_greedy_triton(
            predicts=predicts, accept_index=accept_index, accept_token_num=accept_token_num, candidates=candidates,
            retrieve_index=retrive_index, retrieve_next_token=retrive_next_token,
            retrieve_next_sibling=retrive_next_sibling, target_predict=target_predict)


def clear_unaccepted_c128_draft_states(state: torch.Tensor, req_pool_indices: torch.Tensor, seq_lens: torch.Tensor,
                                       accept_lens: torch.Tensor, *, ring_size: int, num_draft_tokens: int) -> None:
    """Reset the c128 compressor-state ring rows the rejected drafts wrote, in place: for request
    ``b`` and draft offset ``d >= accept_lens[b]`` (``d < num_draft_tokens``), the row
    ``req_pool_indices[b] * ring_size + (seq_lens[b] + d) % ring_size`` of ``state`` (rows of
    ``2 * half`` values) gets 0 in its first half (the pooled kv) and -inf in its second (the
    scores).

    Mirrors ``kernels/ops/kvcache/dsv4_c128_cleanup.py`` ``_clear_unaccepted_c128_draft_states_kernel``
    (Triton, ~7-34), called from ``DeepSeekV4TokenToKVPool.clear_unaccepted_c128_draft_states``
    (``mem_cache/deepseek_v4_memory_pool.py`` ~1936) after a verify pass.
    """
    width = state.shape[-1]
    half = width // 2
    rows = state.view(-1, width)
    for req, seq, acc in zip(req_pool_indices.tolist(), seq_lens.tolist(), accept_lens.tolist()):
        for d in range(max(0, int(acc)), num_draft_tokens):
            row = int(req) * ring_size + (int(seq) + d) % ring_size
            rows[row, :half] = 0.0
            rows[row, half:2 * half] = float("-inf")
