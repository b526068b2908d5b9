"""``sglang-ampere plan MODEL --gpus NxMEM``: a memory plan per pipeline stage, from the headers.

What one GPU of each pipeline stage holds when SGLang 0.5.23 serves a dsv4_int checkpoint (or the
native FP8/FP4 release, below), the
layer split (``SGLANG_PP_LAYER_PARTITION``) that leaves the most memory on the tightest stage,
and the KV-cache tokens (context x concurrency) that then fit. Only the safetensors headers and
``config.json`` are read (no weights), and SGLang is not imported: every rule below was read
from SGLang 0.5.23's source, and the tests check the numbers against SGLang's own module tree
(built on the meta device) and its own KV-pool configurator.

All figures are computed on paper, not measured on a card.

Weights, as SGLang holds them after loading (``srt/models/deepseek_v4.py``)
-----------------------------------------------------------------------------
* The first stage holds ``embed`` (``VocabParallelEmbedding``); the last holds ``norm``,
  ``head`` (``ParallelLMHead``) and ``hc_head_*``; the other stages hold neither
  (``PPMissingLayer``). Layers are split by ``get_pp_indices`` (or
  ``SGLANG_PP_LAYER_PARTITION``).
* Routed experts (INT4 + BF16 group-32 scales): Marlin repacking keeps the byte count
  (``gptq_marlin_repack`` writes ``[K/16, N*16/8]`` int32 from ``[K/8, N]``; the scale permutation
  keeps its shape), so they count as on disk.
* Dense INT8 layers: Marlin W8A16 keeps the weight bytes; block scales become group-128 scales
  ``[K/128, N]`` BF16 (``marlin_layout.block_scales_to_groups``), channel scales ``[1, N]``.
  The per-layer Marlin workspace (one int32 per SM) is ignored.
* ``wo_a`` is dequantized to BF16 at load (``patches/dsv4_loader.py``; SGLang reads it through a
  grouped einsum) and its scale dropped.
* The native release (``quant_method fp8``, :mod:`sglang_ampere.checkpoint_format`) below sm_90:
  dense FP8 layers go to FP8 Marlin W8A16 (``prepare_fp8_layer_for_marlin``,
  ``marlin_utils_fp8.py``): the weight keeps one byte per element and the 128x128 block scales
  become group-128 scales ``[K/128, N]`` in BF16, as for dsv4_int's block strategy; ``wo_a`` is
  dequantized to BF16 (``wo_a_fp8_gemm_enabled`` is False with SGLANG_OPT_FP8_WO_A_GEMM=0,
  ``deepseek_v4.py``). Routed experts go to the Marlin MXFP4 MoE
  (``Mxfp4MarlinMoEMethod``): the packed codes keep their bytes and the E8M0 scales stay one byte
  each (``mxfp4_marlin_process_scales``), but off sm_90 ``create_weights`` pads each rank's expert
  width to a multiple of 128 and the hidden size to a multiple of 256 before loading
  (``mxfp4_marlin_moe.py``): :func:`native_expert_held_bytes` counts that padding (none for the
  release's 2048 x 4096 experts at tp <= 16).
* SGLang stores ``ffn.gate.tid2eid`` as int32 (the checkpoint holds int64) and the compressors'
  ``norm.weight`` as float32 (the checkpoint holds BF16); everything else keeps its dtype.
* RoPE tables: every attention layer registers the ``freqs_cis`` of its kind (complex64,
  ``rows x rope_dim/2``) and a rotary embedding with a ``cos_sin_cache`` (BF16,
  ``rows x rope_dim``). Both are shared by every layer of one kind (window-only layers use
  ``rope_theta``, compressed layers ``compress_rope_theta`` with YaRN), so a stage holds one pair
  per kind it has. SGLang builds ``max_position_embeddings`` rows (384 MiB per kind at the
  release's 1M positions, whatever ``--context-length`` is); ``patches/dsv4_rope.py`` builds
  :func:`served_rope_rows` (the served context + the speculative positions past it), which is
  what is counted here: 24 MiB per kind at 65,536 tokens.
* Speculative decoding (MTP): the draft (``DeepseekV4ForCausalLMNextN``: the checkpoint's
  ``mtp.0`` block, ``e_proj``/``h_proj``, its norms and ``hc_head``) lives on the last stage
  only (``tp_worker.py``). It shares the target's ``lm_head``; with ``pp_size == 1`` it shares
  the embedding too, with ``pp_size > 1`` it loads its own copy
  (``speculative/pp_draft_embedding.py``). Its window-only layer needs the window RoPE kind.
* Tensor parallelism: ``wq_b``, ``wo_a`` (by output group), ``wo_b``, the shared expert, the
  embedding and the head are split over ``tp``; routed experts over ``tp`` along the expert
  width (``moe_tp_size = tp`` with no expert parallelism); ``wq_a``, ``wkv``, the indexer, the
  compressors, the router, norms, ``hc_*``, ``attn_sink``, the MTP projections and the RoPE
  tables are replicated on every rank.

KV pool (``srt/model_executor/pool_configurator.py``: ``DSV4PoolConfigurator``)
--------------------------------------------------------------------------------
SGLang gives the pool ``free after loading - pre_load_free * (1 - mem_fraction_static)``
(``KVCacheConfigurator._profile_available_bytes``), sizes it as ``tokens * coefficient + fixed``
and then takes the minimum token count over all pipeline stages (``_apply_token_constraints``).
Per full-attention token of a stage (the path of the CUDA FlashMLA layout with
``--swa-full-tokens-ratio`` given, no unified KV, no HiSparse):

* the window cache: ``swa_ratio * (585 B * layers + c4 compress-state rows)`` (584-byte FP8
  rows padded per 256-token page to 576-byte units, plus the c4 compressor ring, priced per
  window slot);
* every ratio-4 layer: ``585 / 4`` (compressed cache) ``+ 132 / 4`` (FP8 index keys with their
  scale);
* every ratio-128 layer: ``864 / 128`` (two-row pages padded to 576-byte units);
* with speculative decoding every stage inflates this by ``(layers + 1) / layers`` (SGLang
  reserves the draft's cache that way, on every stage), and the compressor rings grow.

Fixed bytes per stage: the c128 compressor state (``(requests + 1) * ring`` rows of 2 x 512
float32 per ratio-128 layer). The same formulas are used here; a test builds SGLang's
configurator on CPU and compares.

Fixed reserves outside the static pool (assumptions, stated once)
------------------------------------------------------------------
* CUDA context, cuBLAS workspaces, allocator slack: :data:`CUDA_CONTEXT_GIB` per GPU;
* NCCL buffers (pipeline send/recv, TP all-reduce): :data:`NCCL_GIB` per GPU when more than one
  GPU is used;
* CUDA graphs (decode, and draft/verify when speculative): :data:`CUDA_GRAPH_GIB` per stage
  (+ :data:`SPEC_GRAPH_GIB`);
* activations of one prefill chunk (``--chunked-prefill-size`` tokens): the mHC residual stream
  in and out (BF16) and its float32 copy, plus the larger of the attention phase (q and the
  attention output, per rank) and the MoE phase (top-k gate/up and down intermediates and the
  routed input copies, per rank);
* the torch sparse-MLA budget ``SGLANG_AMPERE_TORCH_MLA_BUDGET_MB`` (counted whatever the
  backend, since either phase may be switched to torch at launch);
* on stages with a ratio-4 layer: the C4 indexer output (``chunk x context/4`` float32) plus
  ``SGLANG_AMPERE_INDEXER_BUDGET_MB``;
* on the last stage: the logits of the running requests (float32 over the vocabulary).

``free_bytes`` of a stage is what is left for its KV cache once the weights and all of the above
are taken: the partition maximises the smallest one. Sizes are in bytes; ``--gpus NxMEM`` takes
MEM in GiB (what ``nvidia-smi`` reports in MiB / 1024: 24 for an RTX 3090, 80 for an A100 80GB).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

from . import checkpoint_format, envvars
from .inventory import DENSE, EXPERT, classify, draft_problem
from .notes import Note, note, warning
from .safetensors_io import DTYPE_SIZES, CheckpointError, list_shards, read_header
from .speculative import CHOICES as SPECULATIVE

GIB = 1 << 30
MIB = 1 << 20

#: Assumptions (see the module docstring). GiB per GPU.
CUDA_CONTEXT_GIB = 0.6
NCCL_GIB = 0.25
CUDA_GRAPH_GIB = 0.5
SPEC_GRAPH_GIB = 0.25

#: SGLang 0.5.23 DeepSeek-V4 KV constants (``deepseek_v4_memory_pool.py``, ``kv_layout.py``).
PAGE_SIZE = 256                      # forced for DSV4 (model_overrides/deepseek_v4.py)
KV_ROW_BYTES = 448 + 64 * 2 + 8      # FP8 NoPE + BF16 RoPE + 7 UE8M0 scales + pad (V4 layout)
KV_PAGE_ALIGN = 576                  # V4 layout page stride unit
COMPRESS_STATE_BYTES = 4             # SGLANG_DSV4_COMPRESS_STATE_DTYPE default float32
#: The sm80/86/89 presets' --swa-full-tokens-ratio (plan's default).
DEFAULT_SWA_RATIO = 0.05
#: What SGLang 0.5.23 uses for DeepSeek-V4 when --swa-full-tokens-ratio is not given: its model
#: override sets 0.1 (``arg_groups/model_overrides/deepseek_v4.py``), which then counts as set, so
#: the pool is sized by ratio, never by the request cap.
SGLANG_DSV4_SWA_RATIO = 0.1
DEFAULT_CHUNKED_PREFILL = 4096
#: EAGLE with the checkpoint's MTP layer: what SGLang 0.5.23 picks for DeepSeek itself
#: (``_auto_choose_speculative_params``): 3 chained steps of the one MTP layer, top-k 1
#: (the only value DeepSeek-V4 accepts), 4 verified tokens (the 3 drafts + the bonus).
MTP_STEPS, MTP_TOPK, MTP_DRAFT_TOKENS = 3, 1, 4


#: The codes of the plan's notes (:class:`sglang_ampere.notes.Note`), for callers that act on one.
TP_SPANS_NODES = "plan.tp-spans-nodes"
NATIVE_EXPERT_PADDING = "plan.native-expert-padding"
NO_KV_POOL = "plan.no-kv-pool"
STAGE_HEADROOM = "plan.stage-headroom"
KV_DOES_NOT_FIT = "plan.kv-does-not-fit"


class PlanError(ValueError):
    """The topology cannot serve the model (the message says by how much and what to change)."""


class CapacityError(PlanError):
    """A stage cannot hold its weights and reserves at all (the message names it and what to change)."""


# ----------------------------------------------------------------------------- model facts


@dataclass(frozen=True)
class Model:
    config: dict
    #: bytes per unit as SGLang holds them at tp = 1: "layer.N", "mtp", "embed", "head", "final".
    #: The tp-split part and the replicated part are kept apart: unit -> (split, replicated).
    units: dict[str, tuple[int, int]]
    #: checkpoint_format.DSV4_INT or checkpoint_format.NATIVE
    kind: str = checkpoint_format.DSV4_INT

    @property
    def num_layers(self) -> int:
        return int(self.config["num_hidden_layers"])

    def ratio(self, layer: int) -> int:
        return int(self.config["compress_ratios"][layer])

    @property
    def has_mtp(self) -> bool:
        return "mtp" in self.units

    def rope_kind_bytes(self, rows: int | None = None) -> int:
        """One RoPE kind's tables: complex64 freqs_cis + BF16 cos_sin_cache, of ``rows`` positions
        (SGLang's own ``max_position_embeddings`` when None)."""
        pos = int(self.config["max_position_embeddings"]) if rows is None else rows
        dim = int(self.config["qk_rope_head_dim"])
        return pos * (dim // 2) * 8 + pos * dim * 2


def served_rope_rows(max_position_embeddings: int, context_length: int, draft_tokens: int = 0,
                     draft_steps: int = 0) -> int:
    """RoPE rows a DeepSeek-V4 server with ``patches/dsv4_rope.py`` builds: the served context plus
    the positions speculative decoding reads past the last accepted token (the largest draft-token
    count for the verify pass, plus the draft steps), at most SGLang's ``max_position_embeddings``.
    The patch's module docstring lists the readers and SGLang's length checks behind it."""
    return min(int(max_position_embeddings), int(context_length) + int(draft_tokens) + int(draft_steps))


_LAYER = re.compile(r"^layers\.(\d+)\.")
_SPLIT = re.compile(
    r"\.attn\.(?:wq_b|wo_a|wo_b)\.|\.ffn\.shared_experts\.|\.ffn\.experts\.|^embed\.|^head\.")


def _unit(name: str) -> str:
    m = _LAYER.match(name)
    if m:
        return f"layer.{m.group(1)}"
    if name.startswith("mtp."):
        return "mtp"
    if name == "embed.weight":
        return "embed"
    if name == "head.weight":
        return "head"
    return "final"                       # norm.weight, hc_head_*


def held_bytes(name: str, dtype: str, shape: tuple[int, ...], strategy: str) -> int:
    """Bytes SGLang holds for one checkpoint tensor after loading (tp = 1; module docstring)."""
    n = math.prod(shape)
    role = classify(name)
    if role is not None and role.role == DENSE:
        base = role.base
        if base.endswith(".attn.wo_a"):
            return n * 2 if role.part == "weight" else 0          # BF16, scale dropped
        if role.part == "scale" and strategy == "block":
            rows = shape[0] * 128                                  # [N/128, K/128] -> [K/128, N]
            return shape[1] * rows * 2 if len(shape) == 2 else n * 2
        return n * DTYPE_SIZES[dtype]
    if role is not None and role.role == EXPERT:
        return n * DTYPE_SIZES[dtype]
    if name.endswith(".gate.tid2eid"):
        return n * 4
    if ".compressor.norm.weight" in name:
        return n * 4
    return n * DTYPE_SIZES[dtype]


#: Marlin MXFP4 MoE padding off sm_90 (``Mxfp4MarlinMoEMethod.create_weights``): each rank's expert
#: width to a multiple of this, the hidden size to a multiple of :data:`MXFP4_MARLIN_HIDDEN_PAD`.
MXFP4_MARLIN_INTER_PAD = 128
MXFP4_MARLIN_HIDDEN_PAD = 256


def _round_up(x: int, m: int) -> int:
    return -(-x // m) * m


def native_expert_held_bytes(name: str, dtype: str, shape: tuple[int, ...], config: dict, tp: int = 1) -> int:
    """Bytes SGLang's Marlin MXFP4 MoE holds for one native routed-expert tensor (weight: two e2m1
    codes per byte; scale: one E8M0 byte per 32), with the width padding it applies below sm_90.
    ``w1``/``w3`` are ``[inter, hidden / d]``, ``w2`` is ``[hidden, inter / d]`` (d = 2 or 32)."""
    hidden, inter = int(config["hidden_size"]), int(config["moe_intermediate_size"])
    rank_inter = inter // tp
    p_inter = _round_up(rank_inter, MXFP4_MARLIN_INTER_PAD) * tp
    p_hidden = _round_up(hidden, MXFP4_MARLIN_HIDDEN_PAD)
    rows, cols = shape
    if ".w2." in name:
        rows, cols = p_hidden, cols * p_inter // inter
    else:
        rows, cols = p_inter, cols * p_hidden // hidden
    return rows * cols * DTYPE_SIZES[dtype]


def _dense_strategy(config: dict) -> str:
    qc = config.get("quantization_config") or {}
    groups = qc.get("config_groups") or {}
    for g in groups.values():
        w = g.get("weights") or {}
        if w.get("num_bits") == 8 and w.get("strategy") in ("block", "channel"):
            return w["strategy"]
    return "block"


def load_model(path: str | Path) -> Model:
    """Read ``config.json`` and every shard header of a dsv4_int or native checkpoint (no tensor data).

    Cached per folder while its files keep their sizes and modification times.
    """
    path = Path(path)
    try:
        stamp = tuple((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(path.iterdir()))
    except OSError:
        stamp = ()
    key = (str(path.resolve()), stamp)
    if key not in _MODELS:
        _MODELS.clear()
        _MODELS[key] = _load_model(path)
    return _MODELS[key]


_MODELS: dict = {}


def _load_model(path: Path) -> Model:

    cfg_path = path / "config.json"
    try:
        config = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise PlanError(f"{cfg_path}: cannot read it ({exc}); point MODEL at a dsv4_int checkpoint folder") from exc
    kind, method = checkpoint_format.kind_of_config(config)
    if kind is None:
        raise PlanError(f"{path}: quant_method is {method!r}; plan reads dsv4_int checkpoints and the native "
                        f"release ({checkpoint_format.NATIVE_QUANT_METHOD!r})")
    shards = list_shards(path) if path.is_dir() else []
    if not shards:
        raise PlanError(f"{path}: no *.safetensors shards; plan reads their headers")
    strategy = _dense_strategy(config)
    units: dict[str, list[int]] = {}
    try:
        for shard in shards:
            for t in read_header(shard).tensors.values():
                split = _SPLIT.search(t.name) is not None
                role = classify(t.name)
                if kind == checkpoint_format.NATIVE and role is not None and role.role == EXPERT:
                    b = native_expert_held_bytes(t.name, t.dtype, t.shape, config)
                else:
                    b = held_bytes(t.name, t.dtype, t.shape, strategy)
                units.setdefault(_unit(t.name), [0, 0])[0 if split else 1] += b
    except CheckpointError as exc:
        raise PlanError(str(exc)) from exc
    missing = [f"layer.{i}" for i in range(int(config["num_hidden_layers"])) if f"layer.{i}" not in units]
    if missing:
        raise PlanError(f"{path}: no tensors for {', '.join(missing[:5])}; the checkpoint is incomplete")
    return Model(config, {k: (v[0], v[1]) for k, v in units.items()}, kind)


# ----------------------------------------------------------------------------- KV pool


def paged_bytes_per_token(page: int) -> float:
    """Bytes one token costs in a V4-layout pool with ``page``-token pages (SGLang pads pages)."""
    return -(-page * KV_ROW_BYTES // KV_PAGE_ALIGN) * KV_PAGE_ALIGN / page


def indexer_bytes_per_token(index_head_dim: int) -> int:
    """FP8 index key + its float32 scale (``get_dsv4_indexer_bytes_per_token``, FP8 indexer)."""
    return index_head_dim + index_head_dim // 128 * 4


def ring_sizes(speculative: bool) -> dict[int, int]:
    """Compressor state rows per request (``get_compress_state_ring_size``)."""
    return {4: 16 if speculative else 8, 128: 256 if speculative else 128}


@dataclass(frozen=True)
class KvModel:
    bytes_per_token: float        # per full-attention token of context
    bytes_per_swa_token: float
    fixed_bytes: int              # request-scoped pools (c128 compressor state)
    #: bytes_per_token by layer type: "window" (window cache + c4 compressor rings, at the SWA
    #: ratio), "c4" (compressed cache), "c4_index" (index keys), "c128" (compressed cache).
    by_type: dict = field(default_factory=dict)


def kv_model(config: dict, layers: range, *, swa_ratio: float, max_running_requests: int,
             speculative: bool) -> KvModel:
    """SGLang's DSV4 pool coefficient and fixed bytes for the layers of one stage."""
    ratios = [int(config["compress_ratios"][i]) for i in layers]
    n, n4, n128 = len(ratios), ratios.count(4), ratios.count(128)
    head_dim = int(config["head_dim"])
    index_dim = int(config["index_head_dim"])
    rings = ring_sizes(speculative)
    c4_state = 2 * 2 * head_dim * COMPRESS_STATE_BYTES + 2 * 2 * index_dim * COMPRESS_STATE_BYTES
    swa = paged_bytes_per_token(PAGE_SIZE) * n + rings[4] / PAGE_SIZE * c4_state * n4
    by_type = {"window": swa_ratio * swa,
               "c4": n4 * paged_bytes_per_token(PAGE_SIZE // 4) / 4,
               "c4_index": n4 * indexer_bytes_per_token(index_dim) / 4,
               "c128": n128 * paged_bytes_per_token(PAGE_SIZE // 128) / 128}
    full = by_type["window"] + by_type["c4"] + by_type["c4_index"] + by_type["c128"]
    if speculative and n:
        infl = (n + 1) / n
        full, swa = full * infl, swa * infl
        by_type = {k: v * infl for k, v in by_type.items()}
    fixed = 0
    if n128:
        rows = (max_running_requests + 1) * rings[128] + rings[128] + 1
        rows = -(-rows // 128) * 128
        fixed = rows * 2 * head_dim * COMPRESS_STATE_BYTES * n128
    return KvModel(full, swa, fixed, by_type)


def pool_tokens(available: float, kv: KvModel) -> int:
    """Full-attention tokens SGLang's configurator gives a budget (page-aligned)."""
    t = int(max(available - kv.fixed_bytes, 0) / kv.bytes_per_token)
    return t // PAGE_SIZE * PAGE_SIZE


# ----------------------------------------------------------------------------- SWA pool admission

#: ``--chunked-prefill-size`` SGLang 0.5.23 picks when none is given, by the device memory in GiB
#: (``arg_groups/memory_hook.py:89-170``, ``_handle_gpu_memory_settings``: the first bound the
#: memory is under); with no memory known it takes 4096 (``:171-178``).
SGLANG_CHUNKED_PREFILL_BY_GIB = ((20, 2048), (35, 4096), (60, 4096), (90, 8192), (160, 8192), (math.inf, 16384))
SGLANG_CHUNKED_PREFILL_NO_MEMORY = 4096


def sglang_chunked_prefill(mem_gib: float | None) -> int:
    """The ``--chunked-prefill-size`` SGLang sets itself on a device of ``mem_gib`` GiB."""
    if mem_gib is None:
        return SGLANG_CHUNKED_PREFILL_NO_MEMORY
    return next(c for bound, c in SGLANG_CHUNKED_PREFILL_BY_GIB if mem_gib < bound)


def swa_pool_tokens(max_total_tokens: int, swa_ratio: float) -> int:
    """SGLang's DSV4 SWA pool in ratio mode: ``floor_P(int(floor_P(N) * ratio))``
    (``DSV4PoolConfigurator._compute_dsv4_sizes`` / ``_get_swa_tokens``, pool_configurator.py:1457-1465).
    Ratio mode is the only one for DeepSeek-V4: the model override sets 0.1 when no ratio is
    given, which counts as given (module docstring, :data:`SGLANG_DSV4_SWA_RATIO`)."""
    full = max_total_tokens // PAGE_SIZE * PAGE_SIZE
    return int(full * swa_ratio) // PAGE_SIZE * PAGE_SIZE


@dataclass(frozen=True)
class SwaPool:
    """The SWA pool against what SGLang 0.5.23's prefill admission needs (:func:`swa_pool_rule`)."""

    full_tokens: int       # N: the full-attention pool SGLang sizes (max_total_tokens, page-aligned)
    ratio: float           # --swa-full-tokens-ratio
    chunk: int             # C: --chunked-prefill-size (the context length with chunked prefill off)
    pool: int              # S = floor_P(ratio x N)
    need: int              # max(4P, C + 2P)

    @property
    def ok(self) -> bool:
        return self.pool >= self.need

    @property
    def min_ratio(self) -> float | None:
        """The smallest ratio (4 decimals) whose pool meets :attr:`need` at this N; None above 1."""
        if self.full_tokens < self.need:
            return None
        r = math.ceil(self.need / self.full_tokens * 1e4) / 1e4
        while swa_pool_tokens(self.full_tokens, r) < self.need:
            r = round(r + 1e-4, 4)
        return r if r <= 1.0 else None

    @property
    def min_full_tokens(self) -> int:
        """The smallest --max-total-tokens whose pool meets :attr:`need` at this ratio."""
        n = _round_up(math.ceil(self.need / self.ratio), PAGE_SIZE)
        while swa_pool_tokens(n, self.ratio) < self.need:
            n += PAGE_SIZE
        return n

    @property
    def max_chunk(self) -> int | None:
        """The largest --chunked-prefill-size (a page multiple, as SGLang requires) this pool
        serves; None when the pool is under 4P, where no chunk size helps."""
        return self.pool - 2 * PAGE_SIZE if self.pool >= 4 * PAGE_SIZE else None

    def formula(self) -> str:
        return (f"SWA pool = floor_{PAGE_SIZE}({self.ratio:g} x {self.full_tokens}) = {self.pool} tokens; SGLang "
                f"0.5.23's prefill admission needs max(4 x {PAGE_SIZE}, chunk {self.chunk} + 2 x {PAGE_SIZE}) = "
                f"{self.need}")


def swa_pool_rule(max_total_tokens: int, swa_ratio: float, chunked_prefill_size: int,
                  context_length: int) -> SwaPool:
    """The SWA pool that does not starve SGLang 0.5.23's prefill admission: ``S >= max(4P, C + 2P)``.

    P is the page (256), S the SWA pool (:func:`swa_pool_tokens`), C the chunked-prefill size.
    Why (``reference/cpu-serving.md``, "A stall with a small SWA pool, root-caused"): a chunked
    request's next chunk is admitted only while 2 SWA pages are free
    (``SWAPrefillBudget.available_chunk_tokens``, mem_cache/prefill_budget.py:274-278), but the
    pages that left the 128-token window are freed only after that chunk is admitted
    (``ScheduleBatch.maybe_evict_swa`` from ``alloc_for_extend``). With ``S <= 3P`` a prompt longer
    than its first two chunks waits forever, the server alive and idle; ``S >= 4P`` always makes
    progress for a request that decodes. ``C + 2P`` also covers ``max_new_tokens 0`` and
    ``ignore_eos`` with the radix cache off (``add_one_req_ignore_eos`` has no chunk cap: it needs
    ``min(L, C) - W + min(L + n, W) + P`` free SWA tokens, at most ``C + P``). With chunked prefill
    off (``C <= 0``) a prompt is admitted whole, so C is the context length (page-aligned).
    ``tests/test_swa_admission.py`` runs SGLang's own admission code against this rule.
    """
    chunk = chunked_prefill_size if chunked_prefill_size > 0 else _round_up(context_length, PAGE_SIZE)
    full = max_total_tokens // PAGE_SIZE * PAGE_SIZE
    return SwaPool(full, swa_ratio, chunk, swa_pool_tokens(full, swa_ratio), max(4 * PAGE_SIZE, chunk + 2 * PAGE_SIZE))


# ----------------------------------------------------------------------------- reserves


def activation_bytes(config: dict, tokens: int, tp: int) -> int:
    """Activations of one forward over ``tokens`` tokens on one rank (module docstring)."""
    H, hc = int(config["hidden_size"]), int(config["hc_mult"])
    heads, hd = int(config["num_attention_heads"]) // tp, int(config["head_dim"])
    topk, inter = int(config["num_experts_per_tok"]), int(config["moe_intermediate_size"]) // tp
    stream = 2 * hc * H * 2 + hc * H * 4
    attention = 2 * heads * hd * 2
    moe = topk * 3 * inter * 2 + topk * H * 2
    return tokens * (stream + max(attention, moe))


@dataclass(frozen=True)
class Settings:
    context_length: int = 65536
    max_running_requests: int = 16
    chunked_prefill_size: int = DEFAULT_CHUNKED_PREFILL
    mem_fraction_static: float = 0.85
    swa_ratio: float = DEFAULT_SWA_RATIO
    speculative: str = "none"
    mla_budget_mb: float | None = None
    indexer_budget_mb: float | None = None

    def budget(self, value: float | None, var: str) -> int:
        return envvars.budget_bytes(var, value)


def reserves(model: Model, layers: range, first: bool, last: bool, s: Settings, tp: int, world: int) -> dict[str, int]:
    cfg = model.config
    out = {
        "cuda_context": int(CUDA_CONTEXT_GIB * GIB),
        "nccl": int(NCCL_GIB * GIB) if world > 1 else 0,
        "cuda_graphs": int((CUDA_GRAPH_GIB + (SPEC_GRAPH_GIB if s.speculative != "none" else 0)) * GIB),
        "activations": activation_bytes(cfg, s.chunked_prefill_size, tp),
        "sparse_mla_budget": s.budget(s.mla_budget_mb, envvars.TORCH_MLA_BUDGET_MB),
    }
    if any(model.ratio(i) == 4 for i in layers):
        out["indexer_output"] = s.chunked_prefill_size * (s.context_length // 4) * 4
        out["indexer_budget"] = s.budget(s.indexer_budget_mb, envvars.INDEXER_BUDGET_MB)
    if last:
        vocab = int(cfg["vocab_size"])
        out["logits"] = s.max_running_requests * max(1, _draft_tokens(s)) * (vocab // tp) * 4 * 2
    return out


def _draft_tokens(s: Settings) -> int:
    return MTP_DRAFT_TOKENS if s.speculative != "none" else 1


# ----------------------------------------------------------------------------- stages


@dataclass
class Stage:
    rank: int
    layers: int
    first_layer: int
    weight_bytes: int
    kv_bytes_per_token: float
    kv_fixed_bytes: int
    reserve_bytes: int
    free_bytes: int
    reserves: dict = field(default_factory=dict)
    weights: dict = field(default_factory=dict)
    kv_bytes_per_token_by_type: dict = field(default_factory=dict)
    pool_tokens: int = 0          # KV tokens this stage alone could hold in free_bytes
    sglang_headroom_bytes: int = 0   # left outside SGLang's pool at --mem-fraction-static
    sglang_avail_bytes: int = 0      # SGLang's profile after loading: pre-load free - weights - NCCL

    def to_json(self) -> dict:
        d = asdict(self)
        d["kv_bytes_per_token"] = round(self.kv_bytes_per_token, 3)
        return d


def _share(split_and_rep: tuple[int, int], tp: int) -> int:
    split, rep = split_and_rep
    return -(-split // tp) + rep


def rope_rows(model: Model, s: Settings) -> int:
    """:func:`served_rope_rows` for these settings (MTP's draft tokens and steps when speculative)."""
    spec = (MTP_DRAFT_TOKENS, MTP_STEPS) if s.speculative != "none" else (0, 0)
    return served_rope_rows(model.config["max_position_embeddings"], s.context_length, *spec)


def stage_weights(model: Model, layers: range, first: bool, last: bool, speculative: str, pp: int,
                  tp: int, rope_rows: int | None = None) -> dict[str, int]:
    w: dict[str, int] = {"layers": sum(_share(model.units[f"layer.{i}"], tp) for i in layers)}
    kinds = {model.ratio(i) != 0 for i in layers}
    if first:
        w["embed"] = _share(model.units["embed"], tp)
    if last:
        w["head"] = _share(model.units["head"], tp)
        w["final"] = _share(model.units.get("final", (0, 0)), tp)
        if speculative != "none":
            w["draft"] = _share(model.units.get("mtp", (0, 0)), tp)
            if pp > 1:
                w["draft_embed"] = _share(model.units["embed"], tp)
            kinds.add(False)                # the MTP layer is window-only (ratio 0)
    w["rope_tables"] = len(kinds) * model.rope_kind_bytes(rope_rows)
    return w


def build_stage(model: Model, rank: int, layers: range, pp: int, tp: int, world: int, mem: int, s: Settings) -> Stage:
    first, last = rank == 0, rank == pp - 1
    weights = stage_weights(model, layers, first, last, s.speculative, pp, tp, rope_rows(model, s))
    kv = kv_model(model.config, layers, swa_ratio=s.swa_ratio, max_running_requests=s.max_running_requests,
                  speculative=s.speculative != "none")
    res = reserves(model, layers, first, last, s, tp, world)
    wb, rb = sum(weights.values()), sum(res.values())
    free = mem - wb - rb - kv.fixed_bytes
    return Stage(rank, len(layers), layers.start, wb, kv.bytes_per_token, kv.fixed_bytes, rb, free, res, weights,
                 kv_bytes_per_token_by_type={k: round(v, 3) for k, v in kv.by_type.items()},
                 pool_tokens=max(0, int(free // kv.bytes_per_token)) // PAGE_SIZE * PAGE_SIZE if free > 0 else 0)


# ----------------------------------------------------------------------------- partitions


def default_partition(num_layers: int, pp: int) -> list[int]:
    """SGLang's ``get_pp_indices`` split: even, the remainder to the last stages."""
    base, rem = divmod(num_layers, pp)
    return [base + (1 if r >= pp - rem else 0) for r in range(pp)]


def best_partition(model: Model, pp: int, tp: int, world: int, mem: int, s: Settings) -> list[int]:
    """Contiguous split (each stage >= 1 layer) maximising the smallest ``free_bytes``.

    A bottleneck dynamic programme over (stages, layers): exact, O(pp * L^2) stage evaluations.
    """
    L = model.num_layers
    if pp > L:
        raise PlanError(f"--pp-size {pp} is more than the model's {L} layers")
    cache: dict[tuple[int, int, int], int] = {}

    def free(rank: int, a: int, b: int) -> int:
        key = (rank, a, b)
        if key not in cache:
            cache[key] = build_stage(model, rank, range(a, b), pp, tp, world, mem, s).free_bytes
        return cache[key]

    NEG = -(1 << 62)
    # best[p][j]: best smallest-free over stages 0..p-1 covering layers [0, j)
    best = [[NEG] * (L + 1) for _ in range(pp + 1)]
    cut = [[0] * (L + 1) for _ in range(pp + 1)]
    best[0][0] = 1 << 62
    for p in range(1, pp + 1):
        lo = p                      # at least one layer per stage so far
        hi = L - (pp - p)           # leave one layer for each later stage
        for j in range(lo, hi + 1):
            for i in range(p - 1, j):
                if best[p - 1][i] == NEG:
                    continue
                v = min(best[p - 1][i], free(p - 1, i, j))
                if v > best[p][j]:
                    best[p][j], cut[p][j] = v, i
    parts, j = [], L
    for p in range(pp, 0, -1):
        i = cut[p][j]
        parts.append(j - i)
        j = i
    return parts[::-1]


# ----------------------------------------------------------------------------- the plan


@dataclass
class MemoryPlan:
    gpus: int
    mem_gib: float
    nodes: int
    tp: int
    pp: int
    settings: Settings
    partition: list[int]
    default_partition: list[int]
    ranks: list[Stage]
    default_min_free_bytes: int
    max_total_tokens: int          # tokens every stage can hold in its free_bytes
    sglang_pool_tokens: int        # what SGLang's sizing gives at --mem-fraction-static
    max_mem_fraction_static: float
    min_mem_fraction_static: float = 0.0
    notes: list[Note] = field(default_factory=list)
    kind: str = checkpoint_format.DSV4_INT     # the checkpoint's format (checkpoint_format)
    rope_rows: int = 0                         # RoPE rows per kind (served_rope_rows)
    model_config: dict = field(default_factory=dict, repr=False)

    @property
    def fits(self) -> bool:
        return self.settings.context_length * self.settings.max_running_requests <= self.max_total_tokens

    @property
    def partition_env(self) -> str:
        return ",".join(map(str, self.partition))

    def to_json(self) -> dict:
        s = self.settings
        return {
            "computed": "on paper from the checkpoint headers, not measured",
            "checkpoint": self.kind,
            "gpus": self.gpus, "mem_gib": self.mem_gib, "nodes": self.nodes, "tp_size": self.tp, "pp_size": self.pp,
            "speculative": s.speculative, "context_length": s.context_length,
            "max_running_requests": s.max_running_requests, "chunked_prefill_size": s.chunked_prefill_size,
            "mem_fraction_static": s.mem_fraction_static, "swa_full_tokens_ratio": s.swa_ratio,
            "partition": self.partition, envvars.SGLANG_PP_LAYER_PARTITION: self.partition_env,
            "rope_rows_per_kind": self.rope_rows,
            "default_partition": self.default_partition,
            "min_free_bytes": min(r.free_bytes for r in self.ranks),
            "default_min_free_bytes": self.default_min_free_bytes,
            "max_total_tokens": self.max_total_tokens,
            "max_context_at_concurrency": self.max_total_tokens // max(1, s.max_running_requests),
            "fits": self.fits,
            "sglang_pool_tokens": self.sglang_pool_tokens,
            "max_mem_fraction_static": round(self.max_mem_fraction_static, 3),
            "min_mem_fraction_static": round(self.min_mem_fraction_static, 3),
            "ranks": [r.to_json() for r in self.ranks],
            "notes": [n.text for n in self.notes],
        }


def _stages(model, partition, pp, tp, world, mem, s):
    out, start = [], 0
    for r, n in enumerate(partition):
        out.append(build_stage(model, r, range(start, start + n), pp, tp, world, mem, s))
        start += n
    return out


def make_plan(model: Model, gpus: int, mem_gib: float, *, nodes: int = 1, tp: int = 1,
              settings: Settings | None = None, partition: list[int] | None = None) -> MemoryPlan:
    """The plan for ``gpus`` GPUs of ``mem_gib`` GiB each, ``pp = gpus / tp``."""
    s = settings or Settings()
    if s.speculative not in SPECULATIVE:
        raise PlanError(f"--speculative must be one of {', '.join(SPECULATIVE)}")
    if tp < 1 or gpus % tp:
        raise PlanError(f"{gpus} GPUs cannot be split into --tp-size {tp} groups ({gpus} / {tp} is not whole)")
    if nodes < 1 or gpus % nodes:
        raise PlanError(f"{gpus} GPUs cannot be spread evenly over --nodes {nodes}")
    pp = gpus // tp
    notes = []
    if s.speculative != "none" and not model.has_mtp:
        raise PlanError("--speculative needs the checkpoint's MTP layer (mtp.0.*), which this checkpoint lacks")
    if s.speculative == "dspark" and pp > 1:
        raise PlanError(f"--speculative dspark with pp {pp}: SGLang 0.5.23 runs DSpark over pipeline parallelism "
                        "only on PD prefill nodes; use --speculative mtp, or pp 1 (--tp-size equal to the GPU count)")
    problem = draft_problem(s.speculative, model.config)
    if problem:
        raise PlanError(f"--speculative {s.speculative}: {problem}")
    if tp > gpus // nodes:
        notes.append(warning(TP_SPANS_NODES, f"--tp-size {tp} spans nodes ({gpus // nodes} GPUs per node): TP "
                             "all-reduce over the network is slow"))
    if model.kind == checkpoint_format.NATIVE:
        inter = int(model.config["moe_intermediate_size"])
        if (inter // tp) % MXFP4_MARLIN_INTER_PAD:
            notes.append(note(NATIVE_EXPERT_PADDING, f"native experts at --tp-size {tp}: Marlin pads each rank's "
                              f"expert width {inter // tp} to {_round_up(inter // tp, MXFP4_MARLIN_INTER_PAD)}; the "
                              "weights above count the padding at tp 1 only"))
    heads = int(model.config["num_attention_heads"])
    if heads % tp or int(model.config["o_groups"]) % tp:
        raise PlanError(f"--tp-size {tp} does not divide the {heads} heads and {model.config['o_groups']} "
                        "output groups")
    mem = int(mem_gib * GIB)
    world = gpus
    dflt = default_partition(model.num_layers, pp) if pp <= model.num_layers else []
    if partition is None:
        partition = best_partition(model, pp, tp, world, mem, s)
    elif len(partition) != pp or sum(partition) != model.num_layers or min(partition) < 1:
        raise PlanError(f"partition {partition} must have {pp} entries >= 1 summing to {model.num_layers}")
    ranks = _stages(model, partition, pp, tp, world, mem, s)
    dmin = min(r.free_bytes for r in _stages(model, dflt, pp, tp, world, mem, s)) if dflt else 0
    worst = min(ranks, key=lambda r: r.free_bytes)
    if worst.free_bytes <= 0:
        short = -worst.free_bytes
        raise CapacityError(
            f"{gpus} x {mem_gib:g} GiB (tp {tp} x pp {pp}) cannot hold the model: stage {worst.rank} "
            f"({worst.layers} layers) needs "
            f"{(worst.weight_bytes + worst.reserve_bytes + worst.kv_fixed_bytes) / GIB:.2f} GiB "
            f"(weights {worst.weight_bytes / GIB:.2f} + reserves {worst.reserve_bytes / GIB:.2f}) of "
            f"{mem_gib:g} GiB, {short / GIB:.2f} GiB short even before any KV cache; add GPUs, use larger "
            "ones, or lower --context-length / --chunked-prefill-size")
    tokens = min(r.pool_tokens for r in ranks)
    # SGLang's own sizing: pool = free after load - pre_load * (1 - F), min over stages.
    pre = mem - int(CUDA_CONTEXT_GIB * GIB)
    sg = []
    for r in ranks:
        avail = pre - r.weight_bytes - (r.reserves.get("nccl", 0))
        kv = kv_model(model.config, range(r.first_layer, r.first_layer + r.layers), swa_ratio=s.swa_ratio,
                      max_running_requests=s.max_running_requests, speculative=s.speculative != "none")
        sg.append((avail, kv, pool_tokens(avail - pre * (1 - s.mem_fraction_static), kv)))
    sglang_tokens = max(0, min(t for _, _, t in sg))
    for r, (avail, kv, _) in zip(ranks, sg):
        r.sglang_headroom_bytes = int(avail - sglang_tokens * kv.bytes_per_token - kv.fixed_bytes)
        r.sglang_avail_bytes = int(avail)
    runtime = [r.reserve_bytes - r.reserves["cuda_context"] - r.reserves.get("nccl", 0) for r in ranks]
    fmax = 1 - max(runtime) / pre
    # The smallest fraction that leaves SGLang a pool of one page per request on every stage.
    fmin = max((pre - avail + kv.fixed_bytes + (s.max_running_requests + 1) * PAGE_SIZE * kv.bytes_per_token) / pre
               for avail, kv, _ in sg)
    if sglang_tokens == 0:
        notes.append(warning(NO_KV_POOL, f"at --mem-fraction-static {s.mem_fraction_static} SGLang finds no room "
                             f"for a KV pool on the tightest stage; it needs at least {math.ceil(fmin * 1000) / 1000}"))
    for r, need in zip(ranks, runtime):
        if r.sglang_headroom_bytes < need:
            notes.append(warning(
                STAGE_HEADROOM,
                f"stage {r.rank}: at --mem-fraction-static {s.mem_fraction_static} SGLang's pool leaves "
                f"{r.sglang_headroom_bytes / GIB:.2f} GiB outside it, less than the {need / GIB:.2f} GiB of "
                f"activations/graphs/budgets; use --mem-fraction-static {math.floor(fmax * 1000) / 1000} or lower"))
    if s.context_length * s.max_running_requests > tokens:
        notes.append(warning(
            KV_DOES_NOT_FIT,
            f"--context-length {s.context_length} x --max-running-requests {s.max_running_requests} = "
            f"{s.context_length * s.max_running_requests} tokens do not fit the {tokens} KV tokens left: at "
            f"{s.max_running_requests} requests each can hold {tokens // s.max_running_requests} tokens"))
    return MemoryPlan(gpus, mem_gib, nodes, tp, pp, s, list(partition), dflt, ranks, dmin, tokens, sglang_tokens,
                fmax, fmin, notes, model.kind, rope_rows(model, s), model.config)


@dataclass(frozen=True)
class MemFraction:
    """``--mem-fraction-static`` for a plan (:func:`mem_fraction`)."""

    value: float | None        # what to pass (3 decimals); None: no fraction fits
    low: float                 # the smallest at which SGLang's pool holds min_tokens on every stage
    high: float                # the largest that leaves every stage its reserves (max_mem_fraction_static)
    min_tokens: int
    #: (stage, KV tokens SGLang's pool holds there at ``high``, bytes short of min_tokens) per short stage
    short: tuple[tuple[int, int, int], ...] = ()


def min_pool_tokens(s: Settings) -> int:
    """The least KV pool a plan must leave: one request at the full ``--context-length``, and at least
    one page per running request (plus one), page-aligned."""
    return max(_round_up(s.context_length, PAGE_SIZE), (s.max_running_requests + 1) * PAGE_SIZE)


def mem_fraction(plan: MemoryPlan, min_tokens: int, preferred: float) -> MemFraction:
    """The ``--mem-fraction-static`` closest to ``preferred`` (the preset's) at which SGLang's KV pool
    (``pre-load free x F - (pre-load free - free after loading)``, the same on every stage, module
    docstring) holds ``min_tokens`` on every stage while every stage keeps its reserves outside the pool
    (``high``, :attr:`MemoryPlan.max_mem_fraction_static`)."""
    pre = int(plan.mem_gib * GIB) - int(CUDA_CONTEXT_GIB * GIB)
    need = [r.kv_fixed_bytes + min_tokens * r.kv_bytes_per_token for r in plan.ranks]
    low = max(1 - (r.sglang_avail_bytes - n) / pre for r, n in zip(plan.ranks, need))
    high = plan.max_mem_fraction_static
    lo, hi = math.ceil(low * 1000) / 1000, math.floor(high * 1000) / 1000
    if lo <= hi:
        return MemFraction(min(max(preferred, lo), hi), low, high, min_tokens)
    short = []
    for r, n in zip(plan.ranks, need):
        pool = r.sglang_avail_bytes - pre * (1 - high)
        if pool < n:
            short.append((r.rank, max(0, pool_tokens(pool, _KvOf(r))), int(n - pool)))
    return MemFraction(None, low, high, min_tokens, tuple(short))


@dataclass(frozen=True)
class _KvOf:
    """A stage's KV coefficient in the shape :func:`pool_tokens` reads."""

    stage: Stage

    @property
    def bytes_per_token(self) -> float:
        return self.stage.kv_bytes_per_token

    @property
    def fixed_bytes(self) -> int:
        return self.stage.kv_fixed_bytes


# ----------------------------------------------------------------------------- output


def rope_line(plan: MemoryPlan) -> str:
    """The RoPE tables at the served length and what that frees per stage (patches/dsv4_rope.py)."""
    full = int(plan.model_config["max_position_embeddings"])
    rows = plan.rope_rows
    served, sglang = _kind_bytes(plan.model_config, rows), _kind_bytes(plan.model_config, full)
    freed = [r.weights["rope_tables"] // served * (sglang - served) if served else 0 for r in plan.ranks]
    return (f"# RoPE tables: {rows} rows per kind, {served / MIB:.0f} MiB (SGLang alone: {full} rows, "
            f"{sglang / MIB:.0f} MiB; patches/dsv4_rope.py); freed per stage (MiB): "
            + ",".join(f"{b / MIB:.0f}" for b in freed))


def _kind_bytes(config: dict, rows: int) -> int:
    return Model(config, {}).rope_kind_bytes(rows)


def format_table(plan: MemoryPlan, notes: bool = True) -> str:
    """The plan as ``sglang-ampere plan`` prints it; ``notes=False``: without its ``# note:`` lines
    (the launcher prints the notes itself)."""
    s = plan.settings
    lines = [
        f"# memory plan (computed on paper from the headers, not measured): {plan.kind} checkpoint, "
        f"{plan.gpus} x {plan.mem_gib:g} GiB, "
        f"tp {plan.tp} x pp {plan.pp}" + (f" over {plan.nodes} nodes" if plan.nodes > 1 else "")
        + f", speculative {s.speculative}",
        f"# context {s.context_length} x {s.max_running_requests} requests, chunked prefill "
        f"{s.chunked_prefill_size}, swa ratio {s.swa_ratio}, mem-fraction-static {s.mem_fraction_static}",
        "stage  layers  first  weights GiB  reserves GiB  KV B/token  free GiB  KV tokens",
    ]
    for r in plan.ranks:
        lines.append(f"{r.rank:>5}  {r.layers:>6}  {r.first_layer:>5}  {r.weight_bytes / GIB:>11.2f}  "
                     f"{r.reserve_bytes / GIB:>12.2f}  {r.kv_bytes_per_token:>10.1f}  {r.free_bytes / GIB:>8.2f}  "
                     f"{r.pool_tokens:>9}")
    dmin = plan.default_min_free_bytes
    lines += [rope_line(plan)]
    free = f"# smallest free: {min(r.free_bytes for r in plan.ranks) / GIB:.2f} GiB"
    if plan.pp > 1:                  # one stage has no split
        lines += [f"{envvars.SGLANG_PP_LAYER_PARTITION}={plan.partition_env}",
                  f"{free} (SGLang's default split {','.join(map(str, plan.default_partition))}: {dmin / GIB:.2f} GiB)"]
    else:
        lines += [free]
    lines += [
        f"# KV tokens on every stage: {plan.max_total_tokens} (context x concurrency; at "
        f"{s.max_running_requests} requests up to {plan.max_total_tokens // max(1, s.max_running_requests)} "
        f"tokens each): {'fits' if plan.fits else 'does NOT fit'} {s.context_length} x {s.max_running_requests}",
        f"# SGLang's pool at --mem-fraction-static {s.mem_fraction_static}: {plan.sglang_pool_tokens} tokens; "
        f"keep it between {math.ceil(plan.min_mem_fraction_static * 1000) / 1000} (a pool at all) and "
        f"{math.floor(plan.max_mem_fraction_static * 1000) / 1000} (room for the reserves)",
    ]
    if notes:
        lines += [f"# note: {n.text}" for n in plan.notes]      # the table's own heading for every level
    return "\n".join(lines) + "\n"
