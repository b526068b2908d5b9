"""The dsv4_int methods' CPU paths inside SGLang's real DeepSeek-V4 modules vs float64 math.

Layers come from a real model built and loaded by SGLang on CPU (see test_dsv4_int_load.py).
Expected values are computed in float64 from the checkpoint tensors with independent
dequantization, routing and SwiGLU-clamp code; tolerance: relative error <= 1e-2 (BF16).
"""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("sglang")

from helpers.dsv4int import load_real_model, random_dsv4_int, read_checkpoint
from helpers.environment import sglang_env
from helpers.sglang_cpu import init_sglang_cpu

TOL = 1e-2


@pytest.fixture(scope="module", params=["block", "channel"])
def loaded(request, synth_ckpt, tmp_path_factory):
    init_sglang_cpu()
    from sglang_ampere import plugin

    plugin.register()
    strategy = request.param
    path = random_dsv4_int(synth_ckpt, tmp_path_factory.mktemp(f"m_{strategy}") / "ckpt", strategy, seed=11)
    model, _ = load_real_model(path, draft=False, sentinels=False)
    return strategy, model, read_checkpoint(path), json.loads((path / "config.json").read_text())


def w64(ckpt, base: str) -> torch.Tensor:
    """float64 weight of a dense INT8 checkpoint tensor, dequantized independently."""
    q, s = ckpt[f"{base}.weight"], ckpt[f"{base}.scale"].double()
    if q.dtype == torch.int8:
        n, k = q.shape
        full = s.repeat_interleave(128, 0)[:n].repeat_interleave(128, 1)[:, :k]
        return q.double() * full
    return (q.to(torch.int32) - 128).double() * s[:, None]


def expert64(ckpt, base: str) -> torch.Tensor:
    """float64 weight of an INT4 expert matrix, unpacked bit by bit."""
    b = ckpt[f"{base}.weight"].view(torch.uint8).to(torch.int32)
    codes = torch.stack([b & 0xF, b >> 4], dim=-1).reshape(b.shape[0], -1) - 8
    s = ckpt[f"{base}.scale"].double().repeat_interleave(32, dim=1)
    return codes.double() * s


def rel_err(got: torch.Tensor, ref: torch.Tensor) -> float:
    return float((got.double() - ref).norm() / ref.norm())


def test_int8_linears_match_float64(loaded):
    strategy, model, ckpt, cfg = loaded
    from sglang_ampere.quant.int8_linear import Dsv4Int8LinearMethod

    g = torch.Generator().manual_seed(5)
    layer = model.model.layers[2]
    attn, mlp = layer.self_attn, layer.mlp
    cases = {
        "wqkv_a (fused replicated)": (
            attn.wqkv_a,
            torch.cat([w64(ckpt, "layers.2.attn.wq_a"), w64(ckpt, "layers.2.attn.wkv")]),
        ),
        "wq_b (column parallel)": (attn.wq_b, w64(ckpt, "layers.2.attn.wq_b")),
        "wo_b (row parallel)": (attn.wo_b, w64(ckpt, "layers.2.attn.wo_b")),
        "indexer.wq_b": (attn.indexer.wq_b, w64(ckpt, "layers.2.attn.indexer.wq_b")),
        "shared gate_up (merged)": (
            mlp.shared_experts.gate_up_proj,
            torch.cat([w64(ckpt, "layers.2.ffn.shared_experts.w1"), w64(ckpt, "layers.2.ffn.shared_experts.w3")]),
        ),
        "shared down": (mlp.shared_experts.down_proj, w64(ckpt, "layers.2.ffn.shared_experts.w2")),
    }
    for what, (lin, w_ref) in cases.items():
        assert isinstance(lin.quant_method, Dsv4Int8LinearMethod), what
        assert lin.quant_method.strategy == strategy
        x = torch.randn(7, w_ref.shape[1], generator=g).to(torch.bfloat16)
        y, _ = lin(x)
        assert y.dtype == torch.bfloat16 and tuple(y.shape) == (7, w_ref.shape[0]), what
        err = rel_err(y, x.double() @ w_ref.T)
        assert err <= TOL, f"{what}: relative error {err:.2e}"


def _expert_ref(x64, ckpt, layer, e, limit):
    w13 = torch.cat([expert64(ckpt, f"layers.{layer}.ffn.experts.{e}.w1"),
                     expert64(ckpt, f"layers.{layer}.ffn.experts.{e}.w3")])
    h = x64 @ w13.T
    inter = h.shape[1] // 2
    gate, up = h[:, :inter], h[:, inter:]
    if limit is not None:
        gate, up = gate.clamp(max=limit), up.clamp(-limit, limit)
    return (F.silu(gate) * up) @ expert64(ckpt, f"layers.{layer}.ffn.experts.{e}.w2").T


@pytest.mark.parametrize("layer_id", [0, 3], ids=["hash_routed", "noaux_topk"])
def test_int4_moe_matches_float64(loaded, layer_id):
    """Routed experts through SGLang's DeepseekV2MoE (real gate, HashTopK / TopK, FusedMoE,
    our method, the model's routed scaling): sum_j p_j * SwiGLU-clamped expert, x 1.5 once."""

    strategy, model, ckpt, cfg = loaded
    moe = model.model.layers[layer_id].mlp
    assert moe.is_hash == (layer_id < cfg["num_hash_layers"])
    assert type(moe.experts.quant_method).__name__ == "Dsv4Int4MoEMethod"
    limit, scaling, k = cfg["swiglu_limit"], cfg["routed_scaling_factor"], cfg["num_experts_per_tok"]

    g = torch.Generator().manual_seed(13 + layer_id)
    n_tok = 9
    # Large activations so the SwiGLU clamp (limit 10) is really exercised.
    x = (20 * torch.randn(n_tok, cfg["hidden_size"], generator=g)).to(torch.bfloat16)
    ids = torch.randint(0, cfg["vocab_size"], (n_tok,), generator=g)

    # the fused kernel is CUDA JIT; torch path on CPU
    with sglang_env(SGLANG_OPT_USE_FUSED_HASH_TOPK=False), torch.no_grad():
        out = moe(x, forward_batch=None, input_ids=ids, input_ids_global=ids, skip_shared_experts=True)

    # Independent routing: sqrt(softplus(logits)); hash layers take tid2eid[token],
    # others the top-k of score + bias; weights = selected scores renormalised.
    gate_w = ckpt[f"layers.{layer_id}.ffn.gate.weight"].double()
    scores = F.softplus(x.double() @ gate_w.T).sqrt()
    if moe.is_hash:
        sel = ckpt[f"layers.{layer_id}.ffn.gate.tid2eid"][ids].long()
    else:
        bias = ckpt[f"layers.{layer_id}.ffn.gate.bias"].double()
        sel = (scores + bias).topk(k, dim=1).indices
    p = scores.gather(1, sel)
    p = p / p.sum(1, keepdim=True)

    x64 = x.double()
    ref = torch.zeros(n_tok, cfg["hidden_size"], dtype=torch.float64)
    ref_noclamp = torch.zeros_like(ref)
    for t in range(n_tok):
        for j in range(k):
            e = int(sel[t, j])
            ref[t] += p[t, j] * _expert_ref(x64[t:t + 1], ckpt, layer_id, e, limit)[0]
            ref_noclamp[t] += p[t, j] * _expert_ref(x64[t:t + 1], ckpt, layer_id, e, None)[0]
    ref *= scaling
    ref_noclamp *= scaling

    err = rel_err(out, ref)
    assert err <= TOL, f"layer {layer_id}: relative error {err:.2e}"
    assert rel_err(out, ref_noclamp) > 10 * TOL, "the clamp did not matter; the test would not catch a missing clamp"
    assert rel_err(out, ref / scaling) > 10 * TOL      # routed scaling applied (exactly once: err <= TOL above)


def test_shared_expert_swiglu_clamp(loaded):
    """The shared expert (INT8 gate_up/down) with the clamped SwiGLU, in float64."""
    strategy, model, ckpt, cfg = loaded
    mlp = model.model.layers[3].mlp.shared_experts
    g = torch.Generator().manual_seed(17)
    x = (20 * torch.randn(5, cfg["hidden_size"], generator=g)).to(torch.bfloat16)
    gate_up, _ = mlp.gate_up_proj(x)
    inter = gate_up.shape[1] // 2
    limit = cfg["swiglu_limit"]
    act = (F.silu(gate_up[:, :inter].clamp(max=limit)) * gate_up[:, inter:].clamp(-limit, limit)).to(torch.bfloat16)
    y, _ = mlp.down_proj(act)

    x64 = x.double()
    h = x64 @ torch.cat([w64(ckpt, "layers.3.ffn.shared_experts.w1"), w64(ckpt, "layers.3.ffn.shared_experts.w3")]).T
    a = F.silu(h[:, :inter].clamp(max=limit)) * h[:, inter:].clamp(-limit, limit)
    ref = a @ w64(ckpt, "layers.3.ffn.shared_experts.w2").T
    assert rel_err(y, ref) <= TOL


def test_reference_moe_skips_nonlocal_and_scales_on_request():
    """reference_moe: topk_ids < 0 (experts on another EP rank) contribute nothing; the
    routed scaling factor is applied only when asked (CUDA tensors), never twice."""
    from sglang_ampere.formats.int4 import pack_uint4b8
    from sglang_ampere.quant.int4_moe import reference_moe

    g = torch.Generator().manual_seed(3)
    e, h, i = 3, 64, 64
    w13 = torch.stack([pack_uint4b8(torch.randint(-8, 8, (2 * i, h), generator=g)) for _ in range(e)]).view(torch.int8)
    w2 = torch.stack([pack_uint4b8(torch.randint(-8, 8, (h, i), generator=g)) for _ in range(e)]).view(torch.int8)
    s13 = torch.full((e, 2 * i, h // 32), 0.01, dtype=torch.bfloat16)
    s2 = torch.full((e, h, i // 32), 0.01, dtype=torch.bfloat16)
    x = torch.randn(4, h, generator=g).to(torch.bfloat16)
    ids = torch.tensor([[0, -1], [1, 2], [-1, -1], [2, 0]])
    wts = torch.tensor([[0.7, 0.3], [0.5, 0.5], [0.2, 0.8], [0.4, 0.6]])
    base = reference_moe(x, w13, s13, w2, s2, wts, ids, None, None)
    assert torch.equal(base[2], torch.zeros(h, dtype=torch.bfloat16))
    only0 = reference_moe(x[:1], w13, s13, w2, s2, wts[:1, :1], ids[:1, :1], None, None)
    assert torch.equal(base[0], only0[0])
    scaled = reference_moe(x, w13, s13, w2, s2, wts, ids, None, 1.5)
    assert rel_err(scaled, base.double() * 1.5) <= TOL
