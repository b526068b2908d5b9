"""The CPU target's speculative-decoding ops against SGLang's own Triton kernels, executed by Triton's
interpreter on the same inputs (the kernels the GPU runs for the same call), and the interpreted
launchers of ``patches/cpu_spec.py`` against hand-written expectations. Each has a negative control
(a wrong input or a mutant must give a different answer)."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("sglang")
pytest.importorskip("triton")

from sglang_ampere.kernels import spec_ops_torch as ops  # noqa: E402
from sglang_ampere.kernels.triton_interpret import kernels_interpreted  # noqa: E402

SPEC = "sglang.kernels.ops.speculative"


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(1234)


def test_fill_bonus_tokens(gen):
    from sglang.kernels.ops.speculative import eagle

    bs, width = 5, 4
    tokens = torch.randint(0, 1000, (bs * width,), generator=gen, dtype=torch.int64)
    lens = torch.randint(1, width + 1, (bs,), generator=gen, dtype=torch.int32)
    want = torch.full((bs,), -7, dtype=torch.int32)
    with kernels_interpreted(f"{SPEC}.eagle", ("fill_bonus_tokens",)):
        eagle.fill_bonus_tokens_func(tokens, lens, want, width, bs)
    got = torch.full((bs,), -7, dtype=torch.int32)
    ops.fill_bonus_tokens_cpu(tokens, lens, got, width)
    assert torch.equal(got, want) and not bool((got == -7).any())
    mutant = torch.empty_like(got)
    ops.fill_bonus_tokens_cpu(tokens, lens - 1 + (lens == 1).int(), mutant, width)   # one slot early
    assert not torch.equal(mutant, want)


def test_fill_accept_out_cache_loc(gen):
    from sglang.kernels.ops.speculative import eagle

    accept = torch.tensor([[0, 1, -1, -1], [4, -1, -1, -1], [8, 9, 10, 11]], dtype=torch.int32)
    loc = torch.randperm(64, generator=gen)[:12].to(torch.int64)
    want = torch.full((12,), -5, dtype=torch.int64)
    with kernels_interpreted(f"{SPEC}.eagle", ("fill_accept_out_cache_loc",)):
        eagle.fill_accept_out_cache_loc_func(accept.reshape(-1), loc, want, accept.numel())
    got = torch.full((12,), -5, dtype=torch.int64)
    ops.fill_accept_out_cache_loc_cpu(accept.reshape(-1), loc, got)
    assert torch.equal(got, want) and int((got != -5).sum()) == 7
    other = torch.full((12,), -5, dtype=torch.int64)
    ops.fill_accept_out_cache_loc_cpu(accept.flip(0).reshape(-1), loc, other)   # another order: other slots
    assert not torch.equal(other, want)


def test_assign_draft_cache_locs_contiguous(gen):
    from sglang.kernels.ops.speculative import cache_locs

    pool = torch.randint(0, 10_000, (6, 300), generator=gen, dtype=torch.int32)
    rows = torch.tensor([3, 0, 5])
    seq = torch.tensor([17, 0, 255])
    topk, cols = 1, 3
    want = torch.full((3 * topk * cols,), -1, dtype=torch.int64)
    with kernels_interpreted(f"{SPEC}.cache_locs", ("assign_draft_cache_locs_contiguous",)):
        cache_locs.assign_draft_cache_locs_contiguous_func(rows, pool, seq, want, topk, cols)
    got = torch.full_like(want, -1)
    ops.assign_draft_cache_locs_contiguous_cpu(rows, pool, seq, got, pool.shape[1], topk, cols)
    assert torch.equal(got, want)
    shifted = torch.full_like(want, -1)
    ops.assign_draft_cache_locs_contiguous_cpu(rows, pool, seq + 1, shifted, pool.shape[1], topk, cols)
    assert not torch.equal(shifted, want)
    with pytest.raises(ValueError):
        ops.assign_draft_cache_locs_contiguous_cpu(rows, pool, seq + 50, got, pool.shape[1], topk, cols)


def test_assign_extend_cache_locs(gen):
    from sglang.kernels.ops.speculative import cache_locs

    pool = torch.randint(0, 10_000, (5, 200), generator=gen, dtype=torch.int64)
    rows = torch.tensor([4, 1, 2, 0])
    start = torch.tensor([10, 0, 57, 199])
    end = torch.tensor([14, 0, 90, 200])
    n = int((end - start).sum())
    want = torch.full((n,), -1, dtype=torch.int64)
    with kernels_interpreted(f"{SPEC}.cache_locs", ("assign_extend_cache_locs",)):
        cache_locs.assign_extend_cache_locs[(4,)](rows, pool, start, end, want, pool.shape[1], 4)
    got = torch.full_like(want, -1)
    ops.assign_extend_cache_locs_cpu(rows, pool, start, end, got, pool.shape[1])
    assert torch.equal(got, want)
    swapped = torch.full_like(want, -1)
    ops.assign_extend_cache_locs_cpu(rows.flip(0), pool, start, end, swapped, pool.shape[1])
    assert not torch.equal(swapped, want)


def test_draft_topk1_postprocess(gen):
    from sglang.kernels.ops.speculative import topk1

    logits = torch.randn(4, 20_000, generator=gen)          # > one 8192 split: the split reduction
    logits[1, 9000] = logits[1, 15000] = 50.0                 # a tie across splits: the first index
    logits[2, 3] = float("nan")                               # NaN never wins
    logits[2, 19_999] = 40.0
    pos_want, pos_got = torch.arange(4) * 10, torch.arange(4) * 10
    draft_want = torch.zeros(4, 3, dtype=torch.long)
    draft_got = torch.zeros(4, 3, dtype=torch.long)
    with kernels_interpreted(f"{SPEC}.topk1", ("_draft_topk1_partial_argmax_kernel", "_draft_topk1_finalize_kernel")):
        p_want, i_want = topk1.draft_topk1_postprocess(logits, pos_want, draft_want, 1)
    p_got, i_got = ops.draft_topk1_postprocess(logits, pos_got, draft_got, 1)
    assert torch.equal(i_got, i_want) and torch.equal(p_got, p_want)
    assert torch.equal(pos_got, pos_want) and torch.equal(draft_got, draft_want)
    assert int(i_got[1, 0]) == 9000 and int(i_got[2, 0]) == 19_999
    assert not torch.equal(ops.draft_topk1_postprocess(logits.flip(1), torch.zeros(4, dtype=torch.long))[1], i_want)


def test_row_argmax(gen):
    from sglang.kernels.ops.speculative import row_argmax as ra

    x = torch.randn(3, 5000, generator=gen)
    x[0, 100] = x[0, 4000] = 9.0
    with kernels_interpreted(f"{SPEC}.row_argmax", ("_argmax_partial_kernel", "_argmax_final_kernel")):
        want = ra.row_argmax(x)
    got = ops.row_argmax(x)
    assert torch.equal(got, want) and int(got[0]) == 100
    assert not torch.equal(ops.row_argmax(x.flip(1)), want)
    with pytest.raises(ValueError):
        ops.row_argmax(x.to(torch.bfloat16))


def test_interpreted_chain_tree_and_commit_outputs():
    """The interpreted launchers give the chain tree and verify outputs by their definitions."""
    from sglang.kernels.ops.speculative import eagle

    bonus = torch.tensor([5, 6], dtype=torch.int64)
    draft = torch.tensor([[1, 2, 3], [4, 5, 6]], dtype=torch.int64)
    seq = torch.tensor([10, 20], dtype=torch.int64)
    with kernels_interpreted(f"{SPEC}.eagle", ("_build_chain_tree_kernel",)):
        out = eagle.build_chain_tree(bonus, draft, seq)
    mask, positions, index, next_token, next_sibling, tokens = out[:6]
    assert torch.equal(tokens, torch.tensor([5, 1, 2, 3, 6, 4, 5, 6]))
    assert torch.equal(positions, torch.tensor([10, 11, 12, 13, 20, 21, 22, 23]))
    tri = torch.tril(torch.ones(4, 4, dtype=torch.bool))
    assert torch.equal(mask[:32].view(2, 4, 4), torch.stack([tri, tri]))
    assert torch.equal(index, torch.arange(8).view(2, 4))
    assert torch.equal(next_token, torch.tensor([[1, 2, 3, -1]] * 2))
    assert bool((next_sibling == -1).all())

    predict = torch.tensor([7, 8, 9, 10, 11, 12, 13, 14], dtype=torch.int32)
    accept_index = torch.tensor([[0, 1, -1, -1], [4, 5, 6, 7]], dtype=torch.int32)
    accept_lens = torch.tensor([2, 4], dtype=torch.int32)
    with kernels_interpreted(f"{SPEC}.eagle", ("_verify_commit_outputs_kernel",)):
        new_lens, bonus_out = eagle.prepare_verify_commit_outputs(predict, accept_index, accept_lens, seq)
    assert torch.equal(new_lens, torch.tensor([12, 24])) and torch.equal(bonus_out, torch.tensor([8, 14],
                                                                                               dtype=torch.int32))


def test_verify_tree_greedy_cpu_on_a_chain():
    """Chain (top-k 1) verification: accept drafts while they equal the target's argmax."""
    cand = torch.tensor([[5, 1, 2, 3], [6, 4, 5, 6]], dtype=torch.int64)
    index = torch.arange(8, dtype=torch.int64).view(2, 4)
    nxt = torch.tensor([[1, 2, 3, -1]] * 2, dtype=torch.int64)
    sib = torch.full((2, 4), -1, dtype=torch.int64)

    def run(target):
        predicts = torch.full((8,), -9, dtype=torch.int32)
        accept_index = torch.full((2, 4), -1, dtype=torch.int32)
        accept_num = torch.full((2,), -9, dtype=torch.int32)
        ops.verify_tree_greedy_cpu(predicts=predicts, accept_index=accept_index, accept_token_num=accept_num,
                                   candidates=cand, retrive_index=index, retrive_next_token=nxt,
                                   retrive_next_sibling=sib, target_predict=target)
        return predicts, accept_index, accept_num

    target = torch.tensor([[1, 2, 9, 7], [0, 8, 8, 8]], dtype=torch.int64)
    predicts, accept_index, accept_num = run(target)
    assert accept_num.tolist() == [2, 0]
    assert accept_index.tolist() == [[0, 1, 2, -1], [4, -1, -1, -1]]
    assert predicts[[0, 1, 2, 4]].tolist() == [1, 2, 9, 0]
    # negative control: a target that agrees with every draft accepts all three
    _, _, all_num = run(torch.tensor([[1, 2, 3, 7], [4, 5, 6, 1]], dtype=torch.int64))
    assert all_num.tolist() == [3, 3]


def test_clear_unaccepted_c128_draft_states(gen):
    from sglang.kernels.ops.kvcache import dsv4_c128_cleanup as cc

    ring, half, reqs = 8, 300, 3                      # half > 256: two column blocks in the kernel
    state = torch.randn(reqs * ring, 2 * half, generator=gen)
    rows = torch.tensor([2, 0], dtype=torch.int64)
    seq = torch.tensor([6, 13], dtype=torch.int64)   # the first wraps around the ring
    acc = torch.tensor([1, 4], dtype=torch.int32)    # the second accepted every draft: nothing to clear
    want = state.clone()
    with kernels_interpreted(cc.__name__, ("_clear_unaccepted_c128_draft_states_kernel",)):
        cc.clear_unaccepted_c128_draft_states(want, rows, seq, acc, ring_size=ring, num_draft_tokens=4)
    got = state.clone()
    ops.clear_unaccepted_c128_draft_states(got, rows, seq, acc, ring_size=ring, num_draft_tokens=4)
    assert torch.equal(got, want)
    changed = (want != state).any(dim=1).nonzero().flatten().tolist()
    assert changed == [2 * ring + 0, 2 * ring + 1, 2 * ring + 7]         # slots (6+1..3) % 8 of request 2
    other = state.clone()
    ops.clear_unaccepted_c128_draft_states(other, rows, seq, acc - 1, ring_size=ring, num_draft_tokens=4)
    assert not torch.equal(other, want)


def test_build_tree_kernel_efficient_cpu_on_a_chain():
    """Top-k 1, 3 steps, 4 verify tokens, the QLEN_ONLY mask the CPU engine asks for: the inputs as
    SGLang's ``organize_draft_results`` makes them for a chain (parents [-1, 0, 1], the 3 draft
    scores all selected), the buffers as ``build_tree_kernel_efficient`` allocates them; the
    answer must be ``build_chain_tree``'s (SGLang's own chain construction, interpreted)."""
    from sglang.kernels.ops.speculative import eagle
    from sglang.kernels.ops.speculative.spec_tree import TreeMaskMode

    bs, steps, nv = 2, 3, 4
    seq = torch.tensor([10, 37], dtype=torch.int64)
    parent_list = torch.tensor([[-1, 0, 1]] * bs, dtype=torch.int64)
    top_scores_index = torch.tensor([[0, 1, 2]] * bs, dtype=torch.int64)

    def build(parents):
        mask = torch.full((nv * bs * nv,), True, dtype=torch.bool)
        retrieve = torch.full((3, bs, nv), -1, dtype=torch.long)
        positions = torch.empty((bs * nv,), dtype=torch.long)
        ops.build_tree_kernel_efficient_cpu(parents, top_scores_index, seq, mask, positions, retrieve[0],
                                            retrieve[1], retrieve[2], 1, steps, nv, TreeMaskMode.QLEN_ONLY)
        return mask, positions, retrieve

    mask, positions, retrieve = build(parent_list)
    with kernels_interpreted(f"{SPEC}.eagle", ("_build_chain_tree_kernel",)):
        chain = eagle.build_chain_tree(torch.zeros(bs, dtype=torch.int64), torch.zeros(bs, steps, dtype=torch.int64),
                                       seq)
    assert torch.equal(positions, chain[1])
    assert torch.equal(retrieve[0], chain[2]) and torch.equal(retrieve[1], chain[3])
    assert torch.equal(retrieve[2], chain[4])
    assert torch.equal(mask.view(bs, nv, nv), chain[0][:bs * nv * nv].view(bs, nv, nv))
    # negative control: a tree whose third draft hangs off the root is not the chain
    _, _, other = build(torch.tensor([[-1, 0, -1]] * bs, dtype=torch.int64))
    assert not torch.equal(other[1], chain[3])
