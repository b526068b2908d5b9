"""The DeepSeek-V4-Flash forward in plain torch: prefill, incremental decode, MTP.

Top to bottom, for token ids ``ids [T]`` at positions ``p0 .. p0+T-1`` (one function,
:meth:`ReferenceModel.forward`, serves prefill from position 0, chunked prefill, and decode as
``T = 1``; what earlier calls computed lives in :class:`LayerCache`)::

    R = embed[ids] repeated hc (=4) times                              [T, hc, D]
    for each layer l:
        x, post, comb = hc_pre(R, hc_attn_*);  x = rmsnorm(x, attn_norm)
        R = hc_post(attention_l(x), R, post, comb)
        x, post, comb = hc_pre(R, hc_ffn_*);   x = rmsnorm(x, ffn_norm)
        R = hc_post(moe_l(x, ids), R, post, comb)
    logits = rmsnorm(hc_head(R, hc_head_*), norm) @ head^T             f32 [T, V]

(:mod:`.ops` states hc_pre / hc_post / hc_head, RMSNorm, RoPE and the fake quantizations.)

Attention of a layer with compression ratio ``r`` (0: window only; 4: CSA; 128: HCA)::

    RoPE: theta = compress_rope_theta with YaRN if r > 0, else rope_theta without YaRN
    qr = rmsnorm(x @ wq_a^T, q_norm)                                   q LoRA latent
    q  = rmsnorm_per_head(qr @ wq_b^T  as [T, H, 512]) (no weight);  RoPE(q[..., 448:], pos)
    kv = rmsnorm(x @ wkv^T, kv_norm);  RoPE(kv[448:], pos);  kv[:448] = fp8_fake_quant(kv[:448])
    candidates of the query at t: window rows s with t - window < s <= t, and compressed
        entries j with (j+1)*r <= t+1 (all of them if r = 128; the indexer's top-k if r = 4)
    o  = sink_attention(q, rows, candidates, attn_sink, 512^-0.5);  RoPE^-1(o[..., 448:], pos)
    out = concat_g(o_g @ wo_a_g^T) @ wo_b^T       o split into o_groups groups of H/o_groups heads,
                                                  wo_a viewed as [o_groups, o_lora_rank, H*512/o_groups]

Compressor (width d = 512, or 128 in the indexer; f32 until the norm)::

    a_t = x_t @ wkv^T,  b_t = x_t @ wgate^T + ape[t mod r]             [coff*d], coff = 2 if r == 4
    entry j (window of positions j*r .. j*r+r-1), per channel c:
        r = 128: softmax over the r positions of b[:, c], weights on a[:, c]
        r = 4  : candidates = window j-1 on channels [:d] and window j on channels [d:]
                 (window -1 is absent), one softmax over the 2r candidates
    entry = rmsnorm(entry, norm);  RoPE(entry[-64:], position j*r)
    main:    entry[:-64] = fp8_fake_quant(entry[:-64])
    indexer: entry = fp4_fake_quant(hadamard(entry))
Between calls the pending window (and, for r = 4, the previous complete window) stays as
projections in the cache: that is the decode-time state.

Indexer (r = 4 layers; ``ih`` heads of 128)::

    qi = qr @ indexer.wq_b^T as [T, ih, 128];  RoPE(qi[..., 64:], pos);  qi = fp4_fake_quant(hadamard(qi))
    w  = (x @ weights_proj^T) * 128^-0.5 * ih^-0.5
    score[t, j] = sum_h w[t, h] * relu(<qi[t, h], k_j>)      (f32), only visible j
    top-k (index_topk) visible entries by score; ties go to the earlier entry

MoE::

    s = sqrt(softplus(x @ gate^T))  (f32);  experts = top-k(s + gate.bias)  or  tid2eid[token]
    on the first num_hash_layers layers;  w = s[experts] / sum s[experts] * routed_scaling_factor
    out = sum_e w_e * (swiglu(x W1_e^T, x W3_e^T) @ W2_e^T) + swiglu(x S1^T, x S3^T) @ S2^T
    swiglu(g, u) = silu(min(g, L)) * clamp(u, -L, L),  L = swiglu_limit

MTP block (``mtp.0``, predicts the token after next from the last layer's ``R`` and the next
token's embedding)::

    R_in = (rmsnorm(embed[next], enorm) @ e_proj^T)[:, None] + rmsnorm(R, hnorm) @ h_proj^T
    R_out = block(R_in)   (a window-only layer, its own cache);  logits via its own hc_head / norm

GEMMs use dequantized weights and unquantized activations (W16A16), what the Ampere W8A16 /
W4A16 kernels compute, not DeepSeek's FP8-activation GEMMs. ``dtype=torch.bfloat16`` holds
activations and weights in BF16 where the served path does; ``torch.float32`` computes the
same steps in float32 (the fake quantizations unchanged). Never imports SGLang.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F

from . import ops
from .weights import Checkpoint, ReferenceError, Weights

QUERY_CHUNK = 128


@dataclass(frozen=True)
class ModelConfig:
    vocab: int
    hidden: int
    layers: int
    mtp: int
    heads: int
    head_dim: int
    rope_dim: int
    q_lora: int
    o_groups: int
    o_lora: int
    window: int
    ratios: tuple[int, ...]
    index_heads: int
    index_dim: int
    index_topk: int
    experts: int
    topk: int
    hash_layers: int
    route_scale: float
    swiglu_limit: float
    hc: int
    hc_iters: int
    hc_eps: float
    eps: float
    rope_theta: float
    compress_rope_theta: float
    yarn_factor: float
    yarn_orig: int
    beta_fast: float
    beta_slow: float
    max_positions: int

    @classmethod
    def from_dict(cls, c: dict) -> "ModelConfig":
        try:
            rs = c.get("rope_scaling") or {}
            cfg = cls(
                vocab=int(c["vocab_size"]),
                hidden=int(c["hidden_size"]),
                layers=int(c["num_hidden_layers"]),
                mtp=int(c.get("num_nextn_predict_layers", 0)),
                heads=int(c["num_attention_heads"]),
                head_dim=int(c["head_dim"]),
                rope_dim=int(c["qk_rope_head_dim"]),
                q_lora=int(c["q_lora_rank"]),
                o_groups=int(c["o_groups"]),
                o_lora=int(c["o_lora_rank"]),
                window=int(c["sliding_window"]),
                ratios=tuple(int(r) for r in c["compress_ratios"]),
                index_heads=int(c["index_n_heads"]),
                index_dim=int(c["index_head_dim"]),
                index_topk=int(c["index_topk"]),
                experts=int(c["n_routed_experts"]),
                topk=int(c["num_experts_per_tok"]),
                hash_layers=int(c.get("num_hash_layers", 0)),
                route_scale=float(c["routed_scaling_factor"]),
                swiglu_limit=float(c.get("swiglu_limit", 0.0)),
                hc=int(c["hc_mult"]),
                hc_iters=int(c["hc_sinkhorn_iters"]),
                hc_eps=float(c["hc_eps"]),
                eps=float(c["rms_norm_eps"]),
                rope_theta=float(c["rope_theta"]),
                compress_rope_theta=float(c["compress_rope_theta"]),
                yarn_factor=float(rs.get("factor", 1.0)),
                yarn_orig=int(rs.get("original_max_position_embeddings", 0)),
                beta_fast=float(rs.get("beta_fast", 32)),
                beta_slow=float(rs.get("beta_slow", 1)),
                max_positions=int(c.get("max_position_embeddings", 1 << 20)),
            )
        except KeyError as e:
            raise ReferenceError(f"config.json has no {e.args[0]!r}; not a DeepSeek-V4-Flash config") from e
        if len(cfg.ratios) < cfg.layers + cfg.mtp:
            raise ReferenceError(
                f"config.json: compress_ratios has {len(cfg.ratios)} entries, need {cfg.layers + cfg.mtp}"
            )
        bad = sorted({r for r in cfg.ratios if r not in (0, 4, 128)})
        if bad:
            raise ReferenceError(f"config.json: compress ratios {bad} are not 0, 4 or 128")
        if c.get("scoring_func", "sqrtsoftplus") != "sqrtsoftplus" or c.get("n_shared_experts", 1) != 1:
            raise ReferenceError(
                "config.json: the reference implements scoring_func sqrtsoftplus with one shared expert"
            )
        return cfg

    def freqs(self, ratio: int) -> torch.Tensor:
        if ratio:
            return ops.rope_frequencies(
                self.rope_dim,
                self.compress_rope_theta,
                self.yarn_orig,
                self.yarn_factor,
                self.beta_fast,
                self.beta_slow,
            )
        return ops.rope_frequencies(self.rope_dim, self.rope_theta, 0, 1.0, self.beta_fast, self.beta_slow)


# ------------------------------------------------------------------------------------------
# Caches


@dataclass
class CompressorState:
    entries: torch.Tensor | None = None  # [C, d] compressed rows so far
    kv: torch.Tensor | None = None  # [n, coff*d] f32 projections of positions start..
    score: torch.Tensor | None = None  # same, gate scores + ape
    start: int = 0  # position of kv[0] (a multiple of the ratio)


@dataclass
class LayerCache:
    rows: torch.Tensor | None = None  # [P, head_dim]: every position's kv row (after fp8 fake quant)
    comp: CompressorState = field(default_factory=CompressorState)
    index: CompressorState = field(default_factory=CompressorState)


def new_caches(cfg: ModelConfig) -> list[LayerCache]:
    return [LayerCache() for _ in range(cfg.layers + cfg.mtp)]


def _cat(a: torch.Tensor | None, b: torch.Tensor) -> torch.Tensor:
    return b if a is None else torch.cat((a, b), 0)


# ------------------------------------------------------------------------------------------
# Blocks


def linear(x: torch.Tensor, w: torch.Tensor, dt: torch.dtype) -> torch.Tensor:
    return ops.gemm(x, w, dt)


def compress(
    x: torch.Tensor,
    w: Weights,
    prefix: str,
    ratio: int,
    dim: int,
    pos0: int,
    st: CompressorState,
    cfg: ModelConfig,
    rotate: bool,
    dt: torch.dtype,
) -> torch.Tensor:
    """Feed ``x [T, D]`` at positions ``pos0..`` to a compressor; returns all its entries so far."""
    T = x.shape[0]
    overlap = ratio == 4
    pos = torch.arange(pos0, pos0 + T, device=x.device)
    a = ops.gemm_f32(x, w.cached(prefix + "wkv.weight"), dt)
    b = ops.gemm_f32(x, w.cached(prefix + "wgate.weight"), dt) + w.cached(prefix + "ape").float()[pos % ratio]
    rows_a, rows_b = _cat(st.kv, a), _cat(st.score, b)
    end = pos0 + T
    w0, first_new, last = st.start // ratio, pos0 // ratio, end // ratio
    nw = last - w0
    if last > first_new:
        ka = rows_a[: nw * ratio].view(nw, ratio, -1)
        kb = rows_b[: nw * ratio].view(nw, ratio, -1)
        if overlap:
            prev_a = torch.cat((torch.zeros_like(ka[:1, :, :dim]), ka[:-1, :, :dim]), 0)
            prev_b = torch.cat((torch.full_like(kb[:1, :, :dim], float("-inf")), kb[:-1, :, :dim]), 0)
            ka = torch.cat((prev_a, ka[:, :, dim:]), 1)
            kb = torch.cat((prev_b, kb[:, :, dim:]), 1)
        acc = ops.acc_dtype(dt)
        ent = (ka.to(acc) * torch.softmax(kb.to(acc), dim=1)).sum(1).float()[first_new - w0 :]
        ent = ops.rmsnorm(ent.to(dt), w.cached(prefix + "norm.weight"), cfg.eps, dt)
        ent = ops.rope(ent, torch.arange(first_new, last, device=x.device) * ratio, cfg.freqs(ratio))
        if rotate:
            ent = ops.fp4_fake_quant(ops.hadamard(ent))
        else:
            rd = cfg.rope_dim
            ent = torch.cat((ops.fp8_fake_quant(ent[:, :-rd]), ent[:, -rd:]), -1)
        st.entries = _cat(st.entries, ent)
    keep = (max(last - 1, 0) if overlap else last) * ratio
    st.kv, st.score, st.start = rows_a[keep - st.start :], rows_b[keep - st.start :], keep
    if st.entries is None:
        st.entries = x.new_zeros((0, dim), dtype=dt)
    return st.entries


def attention(
    x: torch.Tensor, w: Weights, cfg: ModelConfig, ratio: int, pos0: int, cache: LayerCache, dt: torch.dtype
) -> torch.Tensor:
    T = x.shape[0]
    H, hd, rd = cfg.heads, cfg.head_dim, cfg.rope_dim
    freqs = cfg.freqs(ratio)
    pos = torch.arange(pos0, pos0 + T, device=x.device)
    qr = ops.rmsnorm(linear(x, w.cached("attn.wq_a.weight"), dt), w.cached("attn.q_norm.weight"), cfg.eps, dt)
    q = linear(qr, w.cached("attn.wq_b.weight"), dt).view(T, H, hd)
    q = ops.rope(ops.rmsnorm(q, None, cfg.eps, dt), pos, freqs)
    kv = ops.rmsnorm(linear(x, w.cached("attn.wkv.weight"), dt), w.cached("attn.kv_norm.weight"), cfg.eps, dt)
    kv = ops.rope(kv, pos, freqs)
    kv = torch.cat((ops.fp8_fake_quant(kv[:, :-rd]), kv[:, -rd:]), -1)
    cache.rows = _cat(cache.rows, kv)
    rows = cache.rows

    comp = None
    select = None
    if ratio:
        if ratio == 4:
            qi, wts = indexer_query(x, qr, w, cfg, pos, dt)
            keys = compress(x, w, "attn.indexer.compressor.", ratio, cfg.index_dim, pos0, cache.index, cfg, True, dt)
            select = (qi, keys, wts)
        comp = compress(x, w, "attn.compressor.", ratio, hd, pos0, cache.comp, cfg, False, dt)

    sink = w.cached("attn.attn_sink")
    out = []
    for a in range(0, T, QUERY_CHUNK):
        b = min(T, a + QUERY_CHUNK)
        tq = pos[a:b]
        lo = max(0, pos0 + a - cfg.window + 1)
        s_pos = torch.arange(lo, pos0 + b, device=x.device)
        mask = (s_pos[None, :] <= tq[:, None]) & (s_pos[None, :] > tq[:, None] - cfg.window)
        keys = rows[lo : pos0 + b]
        if comp is not None and comp.shape[0]:
            C = comp.shape[0]
            vis = torch.arange(C, device=x.device)[None, :] < ((tq + 1) // ratio)[:, None]
            if select is not None:
                vis = vis & _topk_mask(select, a, b, vis, cfg.index_topk)
            mask = torch.cat((mask, vis), 1)
            keys = torch.cat((keys, comp), 0)
        out.append(ops.sink_attention(q[a:b], keys, mask, sink, hd**-0.5))
    o = ops.rope(torch.cat(out, 0), pos, freqs, inverse=True)
    G = cfg.o_groups
    wo_a = w.cached("attn.wo_a.weight").to(dt).view(G, cfg.o_lora, -1)
    acc = torch.float64 if dt == torch.float32 else dt
    o = torch.einsum("tgd,grd->tgr", o.reshape(T, G, -1).to(acc), wo_a.to(acc)).to(dt)
    return linear(o.flatten(1), w.cached("attn.wo_b.weight"), dt)


def indexer_query(x, qr, w: Weights, cfg: ModelConfig, pos, dt):
    """The indexer's queries ``fp4(hadamard(rope(qr @ wq_b^T)))`` ``[T, ih, 128]`` and head
    weights ``(x @ weights_proj^T) * 128^-0.5 * ih^-0.5`` (f32) ``[T, ih]``."""
    qi = linear(qr, w.cached("attn.indexer.wq_b.weight"), dt).view(x.shape[0], cfg.index_heads, cfg.index_dim)
    qi = ops.fp4_fake_quant(ops.hadamard(ops.rope(qi, pos, cfg.freqs(4))))
    wts = linear(x, w.cached("attn.indexer.weights_proj.weight"), dt).float()
    return qi, wts * (cfg.index_dim**-0.5 * cfg.index_heads**-0.5)


def index_scores(qi: torch.Tensor, keys: torch.Tensor, wts: torch.Tensor) -> torch.Tensor:
    """``sum_h w[t, h] * relu(<qi[t, h], k_j>)`` in f32: ``[T, C]``."""
    acc = ops.acc_dtype(qi.dtype)
    s = torch.einsum("thd,cd->thc", qi.to(acc), keys.to(acc))
    return (s.relu() * wts.to(acc).unsqueeze(-1)).sum(1).float()


def _topk_mask(select, a: int, b: int, vis: torch.Tensor, k: int) -> torch.Tensor:
    qi, keys, wts = select
    s = index_scores(qi[a:b], keys, wts[a:b]).masked_fill(~vis, float("-inf"))
    kk = min(k, s.shape[1])
    order = torch.sort(s, dim=1, descending=True, stable=True).indices[:, :kk]
    return torch.zeros_like(vis).scatter_(1, order, True)


def moe(x: torch.Tensor, ids: torch.Tensor, w: Weights, cfg: ModelConfig, layer: int, dt: torch.dtype) -> torch.Tensor:
    acc = ops.acc_dtype(dt)
    scores = F.softplus(ops.gemm_f32(x, w.cached("ffn.gate.weight"), dt).to(acc)).sqrt().float()
    if layer < cfg.hash_layers:
        idx = w.cached("ffn.gate.tid2eid")[ids].long()
    else:
        idx = (scores + w.cached("ffn.gate.bias").float()).topk(cfg.topk, dim=-1).indices
    gw = scores.gather(1, idx)
    gw = (gw.to(acc) / gw.to(acc).sum(-1, keepdim=True) * cfg.route_scale).float()
    y = torch.zeros(x.shape, dtype=torch.float32, device=x.device)
    for e in torch.unique(idx).tolist():
        t, slot = torch.where(idx == e)
        p = f"ffn.experts.{e}."
        h = ops.swiglu(
            linear(x[t], w.get(p + "w1.weight"), dt), linear(x[t], w.get(p + "w3.weight"), dt), cfg.swiglu_limit
        )
        h = h * gw[t, slot, None]
        y.index_add_(0, t, linear(h, w.get(p + "w2.weight"), dt).float())
    s = "ffn.shared_experts."
    h = ops.swiglu(linear(x, w.cached(s + "w1.weight"), dt), linear(x, w.cached(s + "w3.weight"), dt), cfg.swiglu_limit)
    y = y + linear(h, w.cached(s + "w2.weight"), dt).float()
    return y.to(dt)


def _hc(cfg: ModelConfig) -> dict:
    return dict(hc=cfg.hc, iters=cfg.hc_iters, norm_eps=cfg.eps, hc_eps=cfg.hc_eps)


def attn_half(R, w: Weights, cfg: ModelConfig, layer: int, pos0: int, cache: LayerCache, dt) -> torch.Tensor:
    """``R <- hc_post(attention(rmsnorm(hc_pre(R))), R)``: the stateful half of a layer."""
    x, post, comb = ops.hc_pre(
        R, w.cached("hc_attn_fn"), w.cached("hc_attn_scale"), w.cached("hc_attn_base"), **_hc(cfg)
    )
    x = ops.rmsnorm(x, w.cached("attn_norm.weight"), cfg.eps, dt)
    return ops.hc_post(attention(x, w, cfg, cfg.ratios[layer], pos0, cache, dt), R, post, comb)


def ffn_half(R, ids, w: Weights, cfg: ModelConfig, layer: int, dt) -> torch.Tensor:
    """``R <- hc_post(moe(rmsnorm(hc_pre(R))), R)``: row by row, no state."""
    x, post, comb = ops.hc_pre(R, w.cached("hc_ffn_fn"), w.cached("hc_ffn_scale"), w.cached("hc_ffn_base"), **_hc(cfg))
    x = ops.rmsnorm(x, w.cached("ffn_norm.weight"), cfg.eps, dt)
    return ops.hc_post(moe(x, ids, w, cfg, layer, dt), R, post, comb)


def block(
    R: torch.Tensor,
    ids: torch.Tensor,
    w: Weights,
    cfg: ModelConfig,
    layer: int,
    pos0: int,
    cache: LayerCache,
    dt: torch.dtype,
) -> torch.Tensor:
    """One decoder layer on the hc streams ``R [T, hc, D]``."""
    return ffn_half(attn_half(R, w, cfg, layer, pos0, cache, dt), ids, w, cfg, layer, dt)


# ------------------------------------------------------------------------------------------
# The model


class ReferenceModel:
    """DeepSeek-V4-Flash over a :class:`Checkpoint`.

    ``stream=True`` holds one layer's raw weights at a time (plus the next one being read by a
    background thread); embedding, head and hc_head stay resident. ``stream=False`` reads every
    layer once and keeps it.
    """

    def __init__(
        self,
        ckpt: Checkpoint | str,
        dtype: torch.dtype = torch.bfloat16,
        device="cpu",
        stream: bool = True,
        progress: Callable[[int], None] | None = None,
    ):
        self.ckpt = ckpt if isinstance(ckpt, Checkpoint) else Checkpoint(ckpt)
        self.cfg = ModelConfig.from_dict(self.ckpt.config)
        self.dt, self.device, self.stream, self.progress = dtype, torch.device(device), stream, progress
        self.g = self.ckpt.globals().to(self.device)
        self._embed = self.g.raw["embed.weight"].to(self.device)  # BF16 as stored: resident
        self._head = self.g.raw["head.weight"].to(self.device)
        for i in range(self.cfg.layers):
            if not self.ckpt.names(f"layers.{i}."):
                raise ReferenceError(
                    f"{self.ckpt.path}: layer {i} has no tensors (num_hidden_layers is {self.cfg.layers})"
                )
        self._resident: list[Weights] | None = None
        if not stream:
            self._resident = [self._load(i) for i in range(self.cfg.layers)]

    def _load(self, i: int) -> Weights:
        return self.ckpt.part(f"layers.{i}.").to(self.device)

    def _layers(self):
        """(index, weights) for every layer; streaming reads layer i+1 while layer i computes."""
        if self._resident is not None:
            yield from enumerate(self._resident)
            return
        with ThreadPoolExecutor(1) as pool:
            nxt = pool.submit(self._load, 0)
            for i in range(self.cfg.layers):
                w = nxt.result()
                if i + 1 < self.cfg.layers:
                    nxt = pool.submit(self._load, i + 1)
                yield i, w
                del w

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        return self._embed[ids].to(self.dt)

    def check_ids(self, ids: torch.Tensor) -> None:
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= self.cfg.vocab):
            bad = int(ids[(ids < 0) | (ids >= self.cfg.vocab)][0])
            raise ReferenceError(f"token id {bad} is out of range (vocab_size {self.cfg.vocab})")

    def head(self, R: torch.Tensor, w: Weights | None = None, prefix: str = "") -> torch.Tensor:
        w = w or self.g
        h = ops.hc_head(
            R,
            w.cached(prefix + "hc_head_fn"),
            w.cached(prefix + "hc_head_scale"),
            w.cached(prefix + "hc_head_base"),
            self.cfg.eps,
            self.cfg.hc_eps,
        )
        h = ops.rmsnorm(h, w.cached(prefix + "norm.weight"), self.cfg.eps, self.dt).float()
        head = self._head
        return torch.cat([ops.gemm_f32(h, head[v : v + 16384], self.dt) for v in range(0, head.shape[0], 16384)], 1)

    @torch.inference_mode()
    def forward(
        self,
        ids,
        pos0: int,
        caches: list[LayerCache],
        hidden: Callable[[int, torch.Tensor], None] | None = None,
        return_streams: bool = False,
    ):
        """Logits ``f32 [T, vocab]`` for ``ids`` at positions ``pos0..``; ``caches`` carry state.

        ``hidden(layer, R)`` sees each layer's output streams; ``return_streams`` also returns
        the last layer's ``R`` (the MTP block's input)."""
        ids = torch.as_tensor(ids, dtype=torch.long, device=self.device).view(-1)
        self.check_ids(ids)
        R = self.embed(ids).unsqueeze(1).repeat(1, self.cfg.hc, 1)
        for i, w in self._layers():
            R = block(R, ids, w, self.cfg, i, pos0, caches[i], self.dt)
            del w  # before the next layer is fetched: at most this one and the one being read are held
            if hidden is not None:
                hidden(i, R)
            if self.progress is not None:
                self.progress(i)
        logits = self.head(R)
        return (logits, R) if return_streams else logits

    @torch.inference_mode()
    def forward_chunks(
        self,
        ids,
        chunks: list[tuple[int, int]],
        caches: list[LayerCache],
        hidden: Callable[[int, torch.Tensor], None] | None = None,
        return_streams: bool = False,
    ):
        """Logits ``f32 [T, vocab]`` of ``forward`` called on each chunk ``ids[a:b]`` in turn, in ONE
        pass over the weights: the tokens are all known (teacher forcing), so each layer runs every
        chunk (a prefill, then single-token decode steps) with its cache before the next layer is
        read. Attention (the stateful half of a layer) runs chunk by chunk exactly as ``forward``
        calls would; the FFN half runs once over all rows, so each routed expert is decoded once per
        layer. In the float32 mode (batch-invariant) the numbers equal chunk-by-chunk ``forward``
        calls exactly; ``hidden(layer, R)`` sees each chunk's output, layer by layer."""
        ids = torch.as_tensor(ids, dtype=torch.long, device=self.device).view(-1)
        self.check_ids(ids)
        if not chunks or chunks[0][0] != 0 or any(b0 != a1 for (_, b0), (a1, _) in zip(chunks, chunks[1:])):
            raise ReferenceError(f"chunks {chunks} do not cover 0..T contiguously")
        R = self.embed(ids).unsqueeze(1).repeat(1, self.cfg.hc, 1)
        for i, w in self._layers():
            # attention chunk by chunk (prefill, then decode steps on the cache); the FFN half has
            # no state and runs once over all rows, so each expert is decoded once per layer
            R = torch.cat([attn_half(R[a:b], w, self.cfg, i, a, caches[i], self.dt) for a, b in chunks])
            R = ffn_half(R, ids, w, self.cfg, i, self.dt)
            del w
            if hidden is not None:
                for a, b in chunks:
                    hidden(i, R[a:b])
            if self.progress is not None:
                self.progress(i)
        logits = torch.cat([self.head(R[a:b]) for a, b in chunks])
        return (logits, R) if return_streams else logits

    @torch.inference_mode()
    def mtp(self, R: torch.Tensor, next_ids, pos0: int, caches: list[LayerCache], m: int = 0) -> torch.Tensor:
        """MTP block ``m``: logits for the token after ``next_ids`` from the main model's last streams."""
        if m >= self.cfg.mtp:
            raise ReferenceError(f"the checkpoint has {self.cfg.mtp} MTP layer(s)")
        cfg, dt = self.cfg, self.dt
        w = self.ckpt.part(f"mtp.{m}.").to(self.device)
        ids = torch.as_tensor(next_ids, dtype=torch.long, device=self.device).view(-1)
        self.check_ids(ids)
        e = ops.rmsnorm(self.embed(ids), w.cached("enorm.weight"), cfg.eps, dt)
        h = ops.rmsnorm(R, w.cached("hnorm.weight"), cfg.eps, dt)
        x = linear(e, w.cached("e_proj.weight"), dt).unsqueeze(1) + linear(h, w.cached("h_proj.weight"), dt)
        layer = cfg.layers + m
        x = block(x, ids, w, cfg, layer, pos0, caches[layer], dt)
        return self.head(x, w)
