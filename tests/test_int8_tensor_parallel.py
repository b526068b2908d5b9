"""INT8 linears under tensor parallelism (TP=2 simulated in one process).

SGLang's real ColumnParallelLinear / MergedColumnParallelLinear / RowParallelLinear are built
once per rank; the only stand-in is the group they resolve at construction
(``linear._resolve_linear_group`` returns SGLang's own ``_LogicalGroup(rank, 2)``), which is
what a layer of rank ``r`` of 2 sees. Every rank loads the full checkpoint tensors through the
layer's own weight loader (SGLang's v2 loader and parameter classes shard them), then:
the rank's weight and scale must equal the independently computed slices, and the ranks'
outputs must combine (concatenate / sum) to float64 math on the full weight.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("sglang")

from helpers.dsv4int import published_quant_config
from helpers.sglang_cpu import init_sglang_cpu

TP = 2


def _full(strategy, n, k, g):
    if strategy == "block":
        q = torch.randint(-127, 128, (n, k), generator=g, dtype=torch.int8)
        s = ((torch.rand((n + 127) // 128, (k + 127) // 128, generator=g) + 0.5) * 2 ** -7).to(torch.bfloat16)
        w64 = q.double() * s.double().repeat_interleave(128, 0)[:n].repeat_interleave(128, 1)[:, :k]
    else:
        q = torch.randint(1, 256, (n, k), generator=g, dtype=torch.int16).to(torch.uint8)
        s = ((torch.rand(n, generator=g) + 0.5) * 2 ** -7).to(torch.bfloat16)
        w64 = (q.to(torch.int32) - 128).double() * s.double()[:, None]
    return q, s, w64


def _index(strategy, entries):
    out = {}
    for name, (n, k) in entries.items():
        out[f"{name}.weight"] = ("I8" if strategy == "block" else "U8", (n, k))
        out[f"{name}.scale"] = ("BF16", ((n + 127) // 128, (k + 127) // 128) if strategy == "block" else (n,))
    return out


def _rows(strategy, t_scale, start, size):
    return t_scale[start // 128:(start + size) // 128] if strategy == "block" else t_scale[start:start + size]


@pytest.fixture
def rank_builder(monkeypatch):
    init_sglang_cpu()
    from sglang.srt.layers import linear

    def build(rank, ctor):
        monkeypatch.setattr(linear, "_resolve_linear_group", lambda parallel_group: linear._LogicalGroup(rank, TP))
        with torch.device("cpu"):
            return ctor()

    return build


@pytest.mark.parametrize("strategy", ["block", "channel"])
def test_tp2_column_merged_and_row_parallel(strategy, rank_builder):
    from sglang.srt.layers.linear import ColumnParallelLinear, MergedColumnParallelLinear, RowParallelLinear

    from sglang_ampere.quant.config import Dsv4IntConfig
    from sglang_ampere.quant.int8_linear import Dsv4Int8LinearMethod
    from sglang_ampere.schema import parse_quantization_config

    g = torch.Generator().manual_seed(4)
    h, inter, n_col = 512, 512, 512
    cfg = Dsv4IntConfig(parse_quantization_config(published_quant_config(strategy)), _index(strategy, {
        "layers.2.attn.wq_b": (n_col, h),
        "layers.2.ffn.shared_experts.w1": (inter, h), "layers.2.ffn.shared_experts.w3": (inter, h),
        "layers.2.attn.wo_b": (h, 2 * inter),
    }))
    wq_b = _full(strategy, n_col, h, g)
    w1, w3 = _full(strategy, inter, h, g), _full(strategy, inter, h, g)
    wo_b = _full(strategy, h, 2 * inter, g)
    x = torch.randn(5, h, generator=g).to(torch.bfloat16)
    xr = torch.randn(5, 2 * inter, generator=g).to(torch.bfloat16)

    outs = {"col": [], "merged": [], "row": []}
    for rank in range(TP):
        col = rank_builder(rank, lambda: ColumnParallelLinear(h, n_col, bias=False, quant_config=cfg,
                                                               prefix="model.layers.2.self_attn.wq_b"))
        merged = rank_builder(rank, lambda: MergedColumnParallelLinear(h, [inter, inter], bias=False, quant_config=cfg,
                                                                        prefix="model.layers.2.mlp.shared_experts.gate_up_proj"))
        row = rank_builder(
            rank,
            lambda: RowParallelLinear(
                2 * inter, h, bias=False, quant_config=cfg, reduce_results=False, prefix="model.layers.2.self_attn.wo_b"
            ),
        )
        for layer in (col, merged, row):
            assert isinstance(layer.quant_method, Dsv4Int8LinearMethod)

        # As DeepseekV4ForCausalLM.load_weights does: the loader bound to each parameter.
        col.weight.weight_loader(col.weight, wq_b[0])
        col.weight_scale_inv.weight_loader(col.weight_scale_inv, wq_b[1])
        for shard, (q, s, _) in enumerate((w1, w3)):
            merged.weight.weight_loader(merged.weight, q, shard)
            merged.weight_scale_inv.weight_loader(merged.weight_scale_inv, s, shard)
        row.weight.weight_loader(row.weight, wo_b[0])
        row.weight_scale_inv.weight_loader(row.weight_scale_inv, wo_b[1])

        half_n, half_i, half_k = n_col // TP, inter // TP, inter
        # Exact per-rank contents, from independent slicing of the checkpoint tensors.
        assert torch.equal(col.weight.data, wq_b[0][rank * half_n:(rank + 1) * half_n])
        assert torch.equal(col.weight_scale_inv.data, _rows(strategy, wq_b[1], rank * half_n, half_n))
        want_w = torch.cat([w1[0][rank * half_i:(rank + 1) * half_i], w3[0][rank * half_i:(rank + 1) * half_i]])
        want_s = torch.cat(
            [_rows(strategy, w1[1], rank * half_i, half_i), _rows(strategy, w3[1], rank * half_i, half_i)]
        )
        assert torch.equal(merged.weight.data, want_w)
        assert torch.equal(merged.weight_scale_inv.data, want_s)
        assert torch.equal(row.weight.data, wo_b[0][:, rank * half_k:(rank + 1) * half_k])
        want_rs = wo_b[1][:, rank * half_k // 128:(rank + 1) * half_k // 128] if strategy == "block" else wo_b[1]
        assert torch.equal(row.weight_scale_inv.data, want_rs)

        for layer in (col, merged, row):
            layer.quant_method.process_weights_after_loading(layer)
        outs["col"].append(col(x)[0])
        outs["merged"].append(merged(x)[0])
        outs["row"].append(row(xr[:, rank * half_k:(rank + 1) * half_k].contiguous())[0])

    def rel(got, ref):
        return float((got.double() - ref).norm() / ref.norm())

    assert rel(torch.cat(outs["col"], dim=1), x.double() @ wq_b[2].T) <= 1e-2
    gate_up = torch.cat([torch.cat([o[:, :inter // TP] for o in outs["merged"]], 1),
                         torch.cat([o[:, inter // TP:] for o in outs["merged"]], 1)], 1)
    assert rel(gate_up, x.double() @ torch.cat([w1[2], w3[2]]).T) <= 1e-2
    assert rel(sum(o.double() for o in outs["row"]), xr.double() @ wo_b[2].T) <= 1e-2


def test_block_shard_that_splits_a_scale_block_is_refused(rank_builder):
    from sglang.srt.layers.linear import ColumnParallelLinear

    from sglang_ampere.quant.config import Dsv4IntConfig
    from sglang_ampere.schema import parse_quantization_config

    cfg = Dsv4IntConfig(parse_quantization_config(published_quant_config("block")),
                        _index("block", {"layers.2.attn.wq_b": (384, 256)}))
    with pytest.raises(ValueError, match="128x128 INT8 blocks; use a smaller tensor-parallel size"):
        rank_builder(0, lambda: ColumnParallelLinear(256, 384, bias=False, quant_config=cfg,
                                                     prefix="model.layers.2.self_attn.wq_b"))
