"""The whole reference forward on a tiny synthetic checkpoint: weights, prefill vs decode, streaming."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from helpers.reference import INDEX_TOPK, WINDOW, converted, tiny_checkpoint, tiny_ids

from sglang_ampere.formats import fp8_block_dequantize, int4_group_dequantize, int8_block_dequantize, mxfp4_dequantize
from sglang_ampere.reference.model import ReferenceModel, new_caches
from sglang_ampere.reference.weights import Checkpoint, ReferenceError

T = 300


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    root, seed, native = tiny_checkpoint(tmp_path_factory, "ref")
    return {"seed": seed, "native": native, "int": converted(native, root / "dsv4_int")}


@pytest.fixture(scope="module")
def ids(ckpts):
    return tiny_ids(ckpts["seed"], T)


def test_access_layer_decodes_with_the_formats_codecs(ckpts):
    nat, cv = Checkpoint(ckpts["native"]), Checkpoint(ckpts["int"])
    assert (nat.kind, cv.kind) == ("native", "dsv4_int")
    wn, wc = nat.part("layers.2."), cv.part("layers.2.")
    r = wn.raw
    assert torch.equal(
        wn.get("attn.wq_a.weight"), fp8_block_dequantize(r["layers.2.attn.wq_a.weight"], r["layers.2.attn.wq_a.scale"])
    )
    e = "layers.2.ffn.experts.1.w2."
    assert torch.equal(wn.get("ffn.experts.1.w2.weight"), mxfp4_dequantize(r[e + "weight"], r[e + "scale"]))
    rc = wc.raw
    assert rc[e + "scale"].dtype == torch.bfloat16 and rc["layers.2.attn.wq_a.weight"].dtype == torch.int8
    assert torch.equal(wc.get("ffn.experts.1.w2.weight"), int4_group_dequantize(rc[e + "weight"], rc[e + "scale"]))
    assert torch.equal(
        wc.get("attn.wq_a.weight"),
        int8_block_dequantize(rc["layers.2.attn.wq_a.weight"], rc["layers.2.attn.wq_a.scale"]),
    )
    assert torch.equal(wc.get("attn.compressor.ape"), wn.get("attn.compressor.ape"))  # kept tensors are identical
    before = nat.bytes_read
    nat.part("layers.0.")
    assert nat.bytes_read - before == nat.disk_bytes("layers.0.")
    with pytest.raises(ReferenceError, match="missing"):
        wn.get("attn.no_such.weight")


def test_unknown_checkpoint_is_refused(ckpts, tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama", "architectures": ["LlamaForCausalLM"]}))
    with pytest.raises(ReferenceError, match="DeepSeek-V4-Flash"):
        Checkpoint(tmp_path)
    cfg = json.loads((ckpts["native"] / "config.json").read_text())
    cfg["quantization_config"] = {"quant_method": "awq"}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ReferenceError, match="awq"):
        Checkpoint(tmp_path)


@pytest.mark.parametrize("kind", ["native", "int"])
def test_prefill_equals_prefill_plus_decode_at_every_position(ckpts, ids, kind):
    m = ReferenceModel(ckpts[kind], dtype=torch.float32, stream=False)
    assert (m.cfg.window, m.cfg.index_topk, m.cfg.ratios[:4]) == (WINDOW, INDEX_TOPK, (0, 0, 4, 128))
    full = m.forward(ids, 0, new_caches(m.cfg))
    assert full.shape == (T, 300) and bool(torch.isfinite(full).all())
    P = 100  # decode from inside the first ratio-128 window to past its end (128) and on
    caches = new_caches(m.cfg)
    parts = [m.forward(ids[:P], 0, caches)]
    for p in range(P, T):
        parts.append(m.forward(ids[p : p + 1], p, caches))
    inc = torch.cat(parts)
    err = (inc - full).abs().max().item()
    assert err <= 1e-5 * full.abs().max().item(), err
    assert caches[2].comp.entries.shape[0] == T // 4 and caches[3].comp.entries.shape[0] == T // 128
    assert caches[2].index.entries.shape == (T // 4, 128)


def test_indexer_topk_really_selects(ckpts, ids):
    m = ReferenceModel(ckpts["native"], dtype=torch.float32, stream=False)
    sparse = m.forward(ids, 0, new_caches(m.cfg))
    m.cfg = dataclasses.replace(m.cfg, index_topk=10_000)  # every visible entry
    dense = m.forward(ids, 0, new_caches(m.cfg))
    # Identical while at most INDEX_TOPK entries are visible ((t+1)//4 <= 3, t < 15), different later.
    assert torch.equal(sparse[:15], dense[:15])
    assert (sparse[100:] - dense[100:]).abs().max().item() > 1e-3


def test_streaming_equals_all_in_memory(ckpts, ids):
    a = ReferenceModel(ckpts["int"], dtype=torch.float32, stream=True)
    b = ReferenceModel(ckpts["int"], dtype=torch.float32, stream=False)
    seen = []
    a.progress = seen.append
    la = a.forward(ids[:64], 0, new_caches(a.cfg))
    lb = b.forward(ids[:64], 0, new_caches(b.cfg))
    assert torch.equal(la, lb) and seen == [0, 1, 2, 3]
    # Streaming reads every layer once per pass (plus nothing else once the globals are resident).
    before = a.ckpt.bytes_read
    a.forward(ids[:8], 0, new_caches(a.cfg))
    assert a.ckpt.bytes_read - before == sum(a.ckpt.disk_bytes(f"layers.{i}.") for i in range(4))


def test_bfloat16_path_is_close_to_float32(ckpts, ids):
    lf = ReferenceModel(ckpts["native"], dtype=torch.float32, stream=False).forward(
        ids[:64], 0, new_caches(ReferenceModel(ckpts["native"]).cfg)
    )
    mb = ReferenceModel(ckpts["native"], dtype=torch.bfloat16, stream=False)
    lb = mb.forward(ids[:64], 0, new_caches(mb.cfg))
    assert lb.dtype == torch.float32 and bool(torch.isfinite(lb).all())
    p, q = torch.log_softmax(lf, -1), torch.log_softmax(lb, -1)
    kl = (p.exp() * (p - q)).sum(-1)
    # random weights give flat distributions: top-1 flips easily (0.75 seen), the KL stays small
    assert kl.mean().item() < 0.05 and (lf.argmax(-1) == lb.argmax(-1)).float().mean().item() > 0.5


def test_bad_token_ids_are_refused(ckpts):
    m = ReferenceModel(ckpts["native"], dtype=torch.float32, stream=False)
    with pytest.raises(ReferenceError, match="token id 300 is out of range"):
        m.forward([1, 300], 0, new_caches(m.cfg))


def test_mtp_block_input_and_prefill_equals_decode(ckpts, ids, monkeypatch):
    from sglang_ampere.reference import model as M

    m = ReferenceModel(ckpts["int"], dtype=torch.float32, stream=False)
    assert m.cfg.mtp == 1 and m.cfg.ratios[m.cfg.layers] == 0
    n = 80
    _, R = m.forward(ids[:n], 0, new_caches(m.cfg), return_streams=True)
    seen = {}
    real_block = M.block

    def spy(x, *a, **k):
        seen.setdefault("x", x.clone())
        return real_block(x, *a, **k)

    monkeypatch.setattr(M, "block", spy)
    full = m.mtp(R[:-1], ids[1:n], 0, new_caches(m.cfg))
    monkeypatch.setattr(M, "block", real_block)
    assert full.shape == (n - 1, 300) and bool(torch.isfinite(full).all())
    # R_in[t, k] = e_proj(rmsnorm(embed[next_t], enorm)) + h_proj(rmsnorm(R[t, k], hnorm)), in float64
    w = m.ckpt.part("mtp.0.")
    emb = m.ckpt.globals().get("embed.weight").double()[ids[1:n]]

    def rms(v, g):
        return g.double() * v / torch.sqrt((v**2).mean(-1, keepdim=True) + m.cfg.eps)

    want = (rms(emb, w.get("enorm.weight")) @ w.get("e_proj.weight").double().t())[:, None] + rms(
        R[:-1].double(), w.get("hnorm.weight")
    ) @ w.get("h_proj.weight").double().t()
    assert torch.allclose(seen["x"].double(), want, rtol=1e-4, atol=1e-4)
    caches = new_caches(m.cfg)
    parts = [m.mtp(R[:40], ids[1:41], 0, caches)]
    for p in range(40, n - 1):
        parts.append(m.mtp(R[p : p + 1], ids[p + 1 : p + 2], p, caches))
    assert (torch.cat(parts) - full).abs().max().item() <= 1e-5 * full.abs().max().item()


def test_streaming_holds_at_most_two_layers(ckpts, ids, monkeypatch):
    import gc
    import weakref

    live = weakref.WeakSet()
    real_load = ReferenceModel._load
    at_load = []

    def load(self, i):
        gc.collect()
        at_load.append(len(live))  # layers still held when the read of layer i starts
        w = real_load(self, i)
        live.add(w)
        return w

    monkeypatch.setattr(ReferenceModel, "_load", load)
    m = ReferenceModel(ckpts["int"], dtype=torch.float32, stream=True)
    m.forward(ids[:8], 0, new_caches(m.cfg))
    # reading layer i+1 overlaps computing layer i, and nothing older is held
    assert len(at_load) == 4 and max(at_load) <= 1, at_load


def test_one_pass_over_chunks_equals_chunk_by_chunk_forward(ckpts, ids):
    m = ReferenceModel(ckpts["int"], dtype=torch.float32, stream=True)
    chunks = [(0, 150)] + [(p, p + 1) for p in range(150, 160)]
    caches = new_caches(m.cfg)
    step = torch.cat([m.forward(ids[a:b], a, caches) for a, b in chunks])
    before = m.ckpt.bytes_read
    one = m.forward_chunks(ids[:160], chunks, new_caches(m.cfg))
    assert torch.equal(one, step)
    assert m.ckpt.bytes_read - before == sum(m.ckpt.disk_bytes(f"layers.{i}.") for i in range(4))  # one pass
    with pytest.raises(ReferenceError, match="contiguously"):
        m.forward_chunks(ids[:10], [(0, 4), (5, 10)], new_caches(m.cfg))
