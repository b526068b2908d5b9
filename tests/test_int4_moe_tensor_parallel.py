"""INT4 experts under tensor parallelism (MoE TP=2 simulated in one process).

SGLang's real FusedMoE is built once per rank with the per-rank intermediate size (what
``intermediate_size // moe_tp_size`` gives a rank of 2), then told its rank
(``moe_tp_size``/``moe_tp_rank``, read by its weight loader at load time). Full checkpoint
tensors go through FusedMoE's own loader: each rank's ``w13``/``w2`` bytes and group-32 BF16
scales must be the independently computed slices, and the ranks' outputs (our method's
``apply``) must sum to float64 math on the full experts.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("sglang")

from helpers.dsv4int import published_quant_config
from helpers.sglang_cpu import init_sglang_cpu

TP, E, H, I, TOPK = 2, 4, 256, 256, 2


def _expert64(packed, scale):
    b = packed.view(torch.uint8).to(torch.int32)
    codes = torch.stack([b & 0xF, b >> 4], dim=-1).reshape(b.shape[0], -1) - 8
    return codes.double() * scale.double().repeat_interleave(32, dim=1)


def test_moe_tp2_shards_and_recombines():
    init_sglang_cpu()
    from sglang.srt.layers.moe.fused_moe_triton.layer import FusedMoE
    from sglang.srt.layers.moe.token_dispatcher.standard import StandardDispatchOutput
    from sglang.srt.layers.moe.topk import StandardTopKOutput

    from sglang_ampere.quant.config import Dsv4IntConfig
    from sglang_ampere.schema import parse_quantization_config

    g = torch.Generator().manual_seed(8)
    ck = {}
    for e in range(E):
        for w, (n, k) in (("w1", (I, H)), ("w3", (I, H)), ("w2", (H, I))):
            ck[(e, w)] = (torch.randint(-127, 128, (n, k // 2), generator=g, dtype=torch.int8),
                          ((torch.rand(n, k // 32, generator=g) + 0.5) * 2 ** -6).to(torch.bfloat16))
    index = {}
    for (e, w), (q, s) in ck.items():
        index[f"layers.3.ffn.experts.{e}.{w}.weight"] = ("I8", tuple(q.shape))
        index[f"layers.3.ffn.experts.{e}.{w}.scale"] = ("BF16", tuple(s.shape))
    cfg = Dsv4IntConfig(parse_quantization_config(published_quant_config("block")), index)

    x = (4 * torch.randn(6, H, generator=g)).to(torch.bfloat16)
    ids = torch.rand(6, E, generator=g).topk(TOPK, dim=1).indices.to(torch.int32)
    wts = torch.rand(6, TOPK, generator=g) + 0.1
    wts = wts / wts.sum(1, keepdim=True)
    topk = StandardTopKOutput(wts, ids, torch.zeros(6, E))

    outs = []
    for rank in range(TP):
        with torch.device("cpu"):
            layer = FusedMoE(num_experts=E, hidden_size=H, intermediate_size=I // TP, layer_id=3, top_k=TOPK,
                             params_dtype=torch.bfloat16, quant_config=cfg, prefix="model.layers.3.mlp.experts",
                             routed_scaling_factor=1.5, swiglu_limit=10.0, inplace=False)
        assert type(layer.quant_method).__name__ == "Dsv4Int4MoEMethod"
        layer.moe_tp_size, layer.moe_tp_rank = TP, rank
        for (e, w), (q, s) in ck.items():
            shard = {"w1": "w1", "w3": "w3", "w2": "w2"}[w]
            kind = "w13" if w != "w2" else "w2"
            layer.weight_loader(getattr(layer, f"{kind}_weight"), q, f"experts.{kind}_weight", shard, e)
            layer.weight_loader(
                getattr(layer, f"{kind}_weight_scale_inv"), s, f"experts.{kind}_weight_scale_inv", shard, e
            )
        half = I // TP
        for e in range(E):
            (q1, s1), (q3, s3), (q2, s2) = ck[(e, "w1")], ck[(e, "w3")], ck[(e, "w2")]
            r = slice(rank * half, (rank + 1) * half)
            assert torch.equal(layer.w13_weight.data[e], torch.cat([q1[r], q3[r]]))
            assert torch.equal(layer.w13_weight_scale_inv.data[e], torch.cat([s1[r], s3[r]]))
            assert torch.equal(layer.w2_weight.data[e], q2[:, rank * half // 2:(rank + 1) * half // 2])
            assert torch.equal(layer.w2_weight_scale_inv.data[e], s2[:, rank * half // 32:(rank + 1) * half // 32])
        layer.quant_method.process_weights_after_loading(layer)
        out = layer.quant_method.apply(
            layer, StandardDispatchOutput(hidden_states=x, hidden_states_scale=None, topk_output=topk)
        )
        outs.append(out.hidden_states.double())

    ref = torch.zeros(6, H, dtype=torch.float64)
    x64 = x.double()
    for t in range(6):
        for j in range(TOPK):
            e = int(ids[t, j])
            hgu = x64[t] @ torch.cat([_expert64(*ck[(e, "w1")]), _expert64(*ck[(e, "w3")])]).T
            gate, up = hgu[:I].clamp(max=10.0), hgu[I:].clamp(-10.0, 10.0)
            ref[t] += wts[t, j].double() * ((F.silu(gate) * up) @ _expert64(*ck[(e, "w2")]).T)
    got = outs[0] + outs[1]
    assert float((got - ref).norm() / ref.norm()) <= 1e-2
