"""What our methods hand to SGLang's Marlin repack and scale permutation, checked against an
independent unpack of the dsv4_int bytes.

The GPU-only steps are observed, not run: on CPU the methods' ``_prepare_marlin`` is called
on layers of a real loaded model with ``gptq_marlin_repack`` (a CUDA JIT kernel) and
``marlin_make_workspace`` (queries the CUDA device) replaced by recorders;
``marlin_permute_scales`` (pure torch) runs for real and is recorded too.
"""

from __future__ import annotations

import pytest
import torch

from sglang_ampere.quant import marlin_layout


def _words(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Independent GPTQ packing of unsigned codes [N, K] -> int64 words [K*bits/32, N]."""
    p = 32 // bits
    n, k = codes.shape
    c = codes.to(torch.int64).reshape(n, k // p, p)
    words = torch.zeros(n, k // p, dtype=torch.int64)
    for j in range(p):
        words |= c[:, :, j] << (bits * j)
    return words.t()


def _nibbles(packed: torch.Tensor) -> torch.Tensor:
    """dsv4_int INT4 bytes [N, K/2] -> unsigned codes [N, K] (low nibble = even k)."""
    b = packed.view(torch.uint8).to(torch.int64)
    return torch.stack([b & 0xF, b >> 4], dim=-1).reshape(b.shape[0], -1)


def _as_u32(t: torch.Tensor) -> torch.Tensor:
    return t.to(torch.int64) & 0xFFFFFFFF


def test_int4_layout_matches_independent_unpack():
    g = torch.Generator().manual_seed(0)
    packed = torch.randint(-128, 128, (2, 192, 128), generator=g, dtype=torch.int8)   # E, N, K/2
    got = marlin_layout.int4_experts_to_gptq(packed)
    assert got.dtype == torch.int32 and tuple(got.shape) == (2, 256 // 8, 192) and got.is_contiguous()
    for e in range(2):
        assert torch.equal(_as_u32(got[e]), _words(_nibbles(packed[e]), 4))
        assert torch.equal(marlin_layout.gptq_unpack(got[e], 4), _nibbles(packed[e]).to(torch.int32))


def test_int8_layouts_match_independent_unpack():
    g = torch.Generator().manual_seed(1)
    q = torch.randint(-127, 128, (128, 256), generator=g, dtype=torch.int8)
    got = marlin_layout.int8_block_to_gptq(q)
    assert tuple(got.shape) == (64, 128)
    assert torch.equal(_as_u32(got), _words(q.to(torch.int64) + 128, 8))           # uint8b128
    u = torch.randint(0, 256, (128, 256), generator=g, dtype=torch.int16).to(torch.uint8)
    assert torch.equal(_as_u32(marlin_layout.uint8_channel_to_gptq(u)), _words(u.to(torch.int64), 8))


def test_scale_layouts():
    g = torch.Generator().manual_seed(2)
    bs = torch.rand(3, 2, generator=g).to(torch.bfloat16)                            # N=320 (ragged), K=256
    grp = marlin_layout.block_scales_to_groups(bs, 320, 256)
    assert tuple(grp.shape) == (2, 320)
    for n in (0, 127, 128, 255, 256, 319):
        for kg in range(2):
            assert grp[kg, n] == bs[n // 128, kg]
    cs = torch.rand(64, generator=g).to(torch.bfloat16)
    assert torch.equal(marlin_layout.channel_scales_to_groups(cs, 64)[0], cs)
    es = torch.rand(2, 64, 8, generator=g).to(torch.bfloat16)
    assert torch.equal(marlin_layout.expert_scales_to_groups(es)[1], es[1].t())
    with pytest.raises(ValueError, match="does not fit"):
        marlin_layout.block_scales_to_groups(bs[:2], 320, 256)


# --- the real methods' hand-off, on layers of a loaded model --------------------------------

sglang = pytest.importorskip("sglang")


class Recorder:
    def __init__(self, real=None):
        self.calls, self.real = [], real

    def __call__(self, *args, **kwargs):
        self.calls.append((args, kwargs))
        if self.real is not None:
            return self.real(*args, **kwargs)
        return torch.full((7,), 99, dtype=torch.int32)        # stands in for the repacked tiles


@pytest.fixture(scope="module", params=["block", "channel"])
def model_ckpt(request, synth_ckpt, tmp_path_factory):
    from helpers.dsv4int import load_real_model, random_dsv4_int, read_checkpoint
    from helpers.sglang_cpu import init_sglang_cpu

    init_sglang_cpu()
    from sglang_ampere import plugin

    plugin.register()
    path = random_dsv4_int(
        synth_ckpt, tmp_path_factory.mktemp(f"marlin_{request.param}") / "ckpt", request.param, seed=21
    )
    model, _ = load_real_model(path, draft=False, sentinels=False)
    return request.param, model, read_checkpoint(path)


@pytest.fixture
def recorders(monkeypatch):
    import sglang.kernels.ops.quantization.gptq_marlin_repack as repack_mod
    import sglang.srt.layers.quantization.marlin_utils as mu

    repack = Recorder()
    permute = Recorder(real=mu.marlin_permute_scales)
    monkeypatch.setattr(repack_mod, "gptq_marlin_repack", repack)
    monkeypatch.setattr(mu, "marlin_permute_scales", permute)
    monkeypatch.setattr(
        mu, "marlin_make_workspace", lambda device, max_blocks_per_sm=1: torch.zeros(4, dtype=torch.int32)
    )
    return repack, permute


def _kw(call, names):
    args, kwargs = call
    return {**dict(zip(names, args)), **kwargs}


def test_int8_linear_hands_marlin_the_expected_tensors(model_ckpt, recorders):
    strategy, model, ckpt = model_ckpt
    repack, permute = recorders
    lin = model.model.layers[2].self_attn.wq_b
    n, k = lin.dsv4_int8_shape
    lin.quant_method._prepare_marlin(lin)

    (call,) = repack.calls
    a = _kw(call, ["b_q_weight", "perm", "size_k", "size_n", "num_bits"])
    assert (a["size_k"], a["size_n"], a["num_bits"]) == (k, n, 8) and a["perm"].numel() == 0
    q = ckpt["layers.2.attn.wq_b.weight"]
    codes = q.to(torch.int64) + 128 if strategy == "block" else q.to(torch.int64)
    assert a["b_q_weight"].dtype == torch.int32 and a["b_q_weight"].is_contiguous()
    assert torch.equal(_as_u32(a["b_q_weight"]), _words(codes, 8))

    (pcall,) = permute.calls
    p = _kw(pcall, ["s", "size_k", "size_n", "group_size"])
    s = ckpt["layers.2.attn.wq_b.scale"]
    if strategy == "block":
        want = torch.stack([s[nn // 128] for nn in range(n)], dim=1)                  # [K/128, N]
        assert p["group_size"] == 128
    else:
        want = s.view(1, n)
        assert p["group_size"] == -1
    assert (p["size_k"], p["size_n"]) == (k, n) and torch.equal(p["s"], want)
    # The int8 original is gone; no BF16/float copy of the weight is kept.
    assert torch.equal(lin.weight.data, torch.full((7,), 99, dtype=torch.int32))
    held = list(lin.parameters()) + list(lin.buffers()) + [v for v in vars(lin).values() if isinstance(v, torch.Tensor)]
    assert not any(t.is_floating_point() and t.numel() >= n * k for t in held)
    assert lin.dsv4_int8_marlin


def test_int4_moe_hands_marlin_the_expected_tensors(model_ckpt, recorders):
    strategy, model, ckpt = model_ckpt
    repack, permute = recorders
    experts = model.model.layers[3].mlp.experts
    h, i = experts.dsv4_int4_sizes
    n_exp = experts.w13_weight.shape[0]
    experts.quant_method._prepare_marlin(experts)

    assert len(repack.calls) == 2 * n_exp and len(permute.calls) == 2 * n_exp
    for e in range(n_exp):
        a13 = _kw(repack.calls[e], ["b_q_weight", "perm", "size_k", "size_n", "num_bits"])
        a2 = _kw(repack.calls[n_exp + e], ["b_q_weight", "perm", "size_k", "size_n", "num_bits"])
        assert (a13["size_k"], a13["size_n"], a13["num_bits"]) == (h, 2 * i, 4)
        assert (a2["size_k"], a2["size_n"], a2["num_bits"]) == (i, h, 4)
        w13 = torch.cat([ckpt[f"layers.3.ffn.experts.{e}.w1.weight"], ckpt[f"layers.3.ffn.experts.{e}.w3.weight"]])
        assert torch.equal(_as_u32(a13["b_q_weight"]), _words(_nibbles(w13), 4))
        assert torch.equal(_as_u32(a2["b_q_weight"]), _words(_nibbles(ckpt[f"layers.3.ffn.experts.{e}.w2.weight"]), 4))

        p13 = _kw(permute.calls[e], ["s", "size_k", "size_n", "group_size"])
        p2 = _kw(permute.calls[n_exp + e], ["s", "size_k", "size_n", "group_size"])
        s13 = torch.cat([ckpt[f"layers.3.ffn.experts.{e}.w1.scale"], ckpt[f"layers.3.ffn.experts.{e}.w3.scale"]])
        assert (p13["size_k"], p13["size_n"], p13["group_size"]) == (h, 2 * i, 32)
        assert torch.equal(p13["s"], s13.t()) and p13["s"].dtype == torch.bfloat16
        assert (p2["size_k"], p2["size_n"], p2["group_size"]) == (i, h, 32)
        assert torch.equal(p2["s"], ckpt[f"layers.3.ffn.experts.{e}.w2.scale"].t())


# --- what the GPU apply paths hand to SGLang (observed on CPU) ------------------------------

def test_int8_marlin_apply_passes_the_right_gemm_arguments(model_ckpt, recorders, monkeypatch):
    import sglang.srt.layers.quantization.marlin_utils as mu
    from sglang.srt.layers.quantization.utils import scalar_types

    strategy, model, _ = model_ckpt
    lin = model.model.layers[2].self_attn.wo_b
    n, k = lin.dsv4_int8_shape
    lin.quant_method._prepare_marlin(lin)
    gemm = Recorder()
    monkeypatch.setattr(mu, "apply_gptq_marlin_linear", gemm)
    x = torch.randn(3, k).to(torch.bfloat16)
    bias = torch.randn(n).to(torch.bfloat16)
    lin.quant_method.apply(lin, x, bias)
    (call,) = gemm.calls
    kw = call[1]
    assert kw["input"] is x and kw["bias"] is bias
    assert kw["weight"] is lin.weight and kw["weight_scale"] is lin.weight_scale_inv
    assert kw["weight_scale"].dtype == torch.bfloat16
    assert kw["wtype"] == scalar_types.uint8b128
    assert (kw["output_size_per_partition"], kw["input_size_per_partition"]) == (n, k)
    assert kw["is_k_full"] is True
    assert kw["weight_zp"].numel() == kw["g_idx"].numel() == kw["g_idx_sort_indices"].numel() == 0
    expected_scale_rows = k // 128 if strategy == "block" else 1
    assert tuple(kw["weight_scale"].shape) == (expected_scale_rows, n)


@pytest.mark.parametrize("backend", ["marlin", "triton"])
def test_int4_moe_gpu_apply_passes_the_right_quant_info(model_ckpt, recorders, backend):
    from sglang.srt.layers.moe.token_dispatcher.standard import StandardDispatchOutput
    from sglang.srt.layers.moe.topk import StandardTopKOutput

    strategy, model, ckpt = model_ckpt
    experts = model.model.layers[1 if backend == "marlin" else 0].mlp.experts   # layers not repacked by other tests
    method = experts.quant_method
    before = experts.w13_weight.data.clone()
    if backend == "marlin":
        method._prepare_marlin(experts)
    else:   # what SGLANG_AMPERE_MOE_BACKEND=triton gives at construction
        method.backend = "triton"
        method.create_moe_runner(experts, method.moe_runner_config)
        method._prepare_triton(experts)
    method.active = backend
    run = Recorder()
    method.runner.run = run
    x = torch.randn(4, experts.dsv4_int4_sizes[0]).to(torch.bfloat16)
    topk = StandardTopKOutput(torch.full((4, 2), 0.5), torch.zeros(4, 2, dtype=torch.int32), torch.zeros(4, 8))
    dispatch = StandardDispatchOutput(hidden_states=x, hidden_states_scale=None, topk_output=topk)
    method.apply(experts, dispatch)
    (call,) = run.calls
    assert call[0][0] is dispatch
    info = call[0][1]
    assert method.runner.runner_backend.value == backend
    assert method.fuse_routed_scaling_factor_in_topk is False
    assert method.runner.config.routed_scaling_factor == 1.5 and method.runner.config.swiglu_limit == 10.0
    if backend == "marlin":
        assert type(info).__name__ == "MarlinMoeQuantInfo"
        assert info.weight_bits == 4 and info.is_k_full and info.expert_map is None
        assert info.w13_qweight is experts.w13_weight and info.w2_scales is experts.w2_weight_scale_inv
        assert info.w13_scales.dtype == torch.bfloat16 and info.w13_qzeros is None
    else:
        assert type(info).__name__ == "TritonMoeQuantInfo"
        assert info.use_int4_w4a16 and not info.use_int8_w8a16 and info.block_shape == [0, 32]
        assert info.w13_weight.dtype == torch.uint8 and torch.equal(info.w13_weight.view(torch.int8), before)
        assert info.w13_scale is experts.w13_weight_scale_inv and info.w13_zp is None
