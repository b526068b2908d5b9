"""TileLang kernel for the C4 indexer's paged MQA logits on sm_86 / sm_80 (tensor cores, integer FP8 decode).

Contract: :mod:`sglang_ampere.kernels.indexer` (module docstring): for query row ``b`` and
compressed entry ``i < seq_lens[b]``::

    out[b, i] = scale[i] * sum_h weight[b, h] * relu(<q[b, h, :], key[i]>)      (0 past the length)

with ``q`` ``[B, 1, 64, 128]`` e4m3fn, the index-K pool ``[pages, 64, 1, 132]`` (per 8448-byte
page: 64 x 128 e4m3 key bytes entry-major, then 64 float32 scales; :mod:`.kv_layout`), entry
``i`` of row ``b`` at slot ``i % 64`` of page ``page_table[b, i // 64]``. The torch path there
is the reference; this module holds the kernel builder, the tile plan and the launch wrapper.

FP8 decode (no FP8 instruction exists on sm_86): an e4m3 byte ``s eeee mmm`` becomes the
float16 with bits ``s 0eeee mmm0000000``, i.e. two integer operations per value
(``(b & 0x7F) << 7 | (b & 0x80) << 8``). That float16 is exactly ``e4m3(b) * 2^-8`` for normal
*and* subnormal bytes (float16's exponent range covers e4m3's, its subnormals cover e4m3's),
so the tensor cores see exact values and the constant ``2^-8 * 2^-8`` of ``<q, key>`` is
undone in the epilogue (``* 2^16``, folded into the entry's scale; ReLU commutes with a positive
factor). FP16 and BF16 ``mma.m16n8k16`` with float32 accumulation run at the same rate on
sm_80/sm_86, and ``e4m3 -> bf16`` would need an exponent re-bias plus a separate subnormal path.
Products and sums are float32 (``|<q, key>| * 2^-16 <= 448^2 * 128 * 2^-16 ~ 392``).

Tile plan (per CTA: one query row, all 64 heads, one split of the row's pages)::

    Q_s   [64, 128]  fp16   shared   the row's 64 head queries, decoded once per CTA    16 KB
    K_s   [BN, 128]  fp16   shared   BN = 64 * pages_per_iter keys, decoded from FP8    16/32 KB
    w_s   [64]       fp32   shared   the row's head weights
    sc_s  [BN]       fp32   shared   the keys' scales * 2^16
    S     [BN, 64]   fp32   regs     S = K_s . Q_s^T           (mma.m16n8k16 fp16 -> fp32)
    epilogue: S = relu(S) * w_s[h]; tot[j] = sum_h S[j, h] (warp shuffles: FullRow policy puts
              a warp's 16-entry rows x all 64 heads in one warp); out = tot * sc_s (j < len)

sm_86 (99 KB shared per block, 100 KB per SM): BN = 128 (2 pages per step), 256 threads (8
warps, 16 entries each) -> 48.75 KB shared, 2 CTAs per SM; 32 accumulator registers per
thread (kernel-report: 96 registers, no spills, 64 HMMA per warp and step). sm_80 (163 KB):
the same plan, also 2 CTAs per SM (there the 96 x 256 registers per CTA are the limit).

Grid ``(rows, splits)``: row ``b``'s blocks of BN entries go to split ``blk % splits`` (decode:
few rows, long contexts, so the splits fill the GPU; prefill: thousands of rows, 1 split).
Splits write disjoint columns of the result, so there is no combine step. Work is bounded by
``min(seq_lens[b], 64 * max_pages, max_seq_len)``; every column of ``[0, max_seq_len)`` is
written exactly once (scores below the length, zeros above: the tail blocks only store zeros),
so the wrapper allocates the result with ``torch.empty``. Page ids are clamped into
``[0, pages)`` like the torch path (a ``-1`` column past the length may be read as page 0 when
it shares a block with the last valid page; those entries are masked to 0).
"""


import functools
from dataclasses import dataclass

import torch

from . import kv_layout as L
from .tilelang_build import AMPERE_PASS_CONFIGS, compile_prim, device_arch, plan_for_arch
from .tilelang_build import target_for as target_for  # re-exported: kernel-report reads M.target_for

HEADS = 64
DIM = L.INDEX_DIM                 # 128
PAGE = L.INDEX_PAGE_SIZE          # 64 entries per page
#: Epilogue factor undoing the two 2^-8 of the float16 decode.
UNDO_DECODE = 2.0 ** 16


def fp16_of_e4m3_torch(b: torch.Tensor) -> torch.Tensor:
    """The kernel's FP8 decode rule in torch (for tests): e4m3 bytes -> float16 ``e4m3(b) * 2^-8``.

    The same two integer operations as the kernel: ``(b & 0x7F) << 7 | (b & 0x80) << 8``.
    """
    i = b.to(torch.int32)
    bits = ((i & 0x7F) << 7) | ((i & 0x80) << 8)
    return bits.to(torch.int16).view(torch.float16)


@dataclass(frozen=True)
class TilePlan:
    pages_per_iter: int = 2       # BN = 64 * pages_per_iter entries per step
    threads: int = 256

    @property
    def block_n(self) -> int:
        return PAGE * self.pages_per_iter

    def shared_bytes(self, heads: int = HEADS) -> int:
        """Q_s + K_s (float16) + w_s + sc_s (float32): what the kernel allocates."""
        return 2 * (heads * DIM + self.block_n * DIM) + 4 * (heads + self.block_n)


#: Tile plan per architecture (compute capability major*10+minor).
PLANS = {86: TilePlan(2, 256), 80: TilePlan(2, 256)}
#: Split counts the kernel is compiled for (decode picks one from the shapes, prefill uses 1).
SPLITS = (1, 2, 4, 8, 16, 32, 64)


def plan_for(arch: int) -> TilePlan:
    """The tile plan for ``sm_{arch}`` (see :func:`.tilelang_build.plan_for_arch`)."""
    return plan_for_arch(PLANS, arch, "indexer")


@dataclass(frozen=True)
class KernelSpec:
    """Everything a compiled indexer kernel is specialised on."""
    heads: int = HEADS
    num_splits: int = 1
    plan: TilePlan = PLANS[86]
    page_stride: int = L.INDEX_PAGE_BYTES     # bytes between pages of the pool

    @property
    def name(self) -> str:
        kind = "prefill" if self.num_splits == 1 else f"decode_s{self.num_splits}"
        return f"indexer_logits_{kind}_h{self.heads}"


def build(spec: KernelSpec):
    """The TileLang ``prim_func`` for ``spec`` (importing TileLang only here)."""
    import tilelang.language as T

    FP16, FP32, I32, U8 = "float16", "float32", "int32", "uint8"
    H, NS = spec.heads, spec.num_splits
    PPI, threads = spec.plan.pages_per_iter, spec.plan.threads
    BN = PAGE * PPI
    if H % 16:
        raise ValueError(f"the TileLang indexer needs a head count that is a multiple of 16, got {H}")
    st = spec.page_stride
    if st % 16 or st < L.INDEX_PAGE_BYTES:
        raise ValueError(f"page stride {st} must be a multiple of 16 and at least {L.INDEX_PAGE_BYTES}")
    st_w = st // 4                                   # page stride in float32 words
    sc_w = L.INDEX_SCALE_OFFSET // 4                 # scale offset in words

    rows = T.dynamic("rows")
    max_pages = T.dynamic("max_pages")
    width = T.dynamic("max_seq_len")
    nbytes = T.dynamic("cache_bytes")
    nwords = T.dynamic("cache_words")

    @T.macro
    def fp16_of_e4m3(byte):
        v = T.Cast("uint32", byte)
        bits = ((v & T.uint32(0x7F)) << T.uint32(7)) | ((v & T.uint32(0x80)) << T.uint32(8))
        return T.reinterpret(T.Cast("uint16", bits), FP16)

    @T.prim_func
    def indexer_logits(Q: T.Tensor((rows, H, DIM), U8), C: T.Tensor((nbytes,), U8),
                       Cf: T.Tensor((nwords,), FP32),
                       Wt: T.Tensor((rows, H), FP32), Lens: T.Tensor((rows,), I32),
                       PT: T.Tensor((rows, max_pages), I32), Out: T.Tensor((rows, width), FP32)):
        with T.Kernel(rows, NS, threads=threads) as (b, sp):
            Q_s = T.alloc_shared((H, DIM), FP16)
            K_s = T.alloc_shared((BN, DIM), FP16)
            w_s = T.alloc_shared((H,), FP32)
            sc_s = T.alloc_shared((BN,), FP32)
            acc = T.alloc_fragment((BN, H), FP32)
            tot = T.alloc_fragment((BN,), FP32)

            for h, d in T.Parallel(H, DIM):
                Q_s[h, d] = fp16_of_e4m3(Q[b, h, d])
            for h in T.Parallel(H):
                w_s[h] = Wt[b, h]
            npages = (nbytes - L.INDEX_PAGE_BYTES) // st + 1    # the pool's page count
            n = T.max(T.min(T.min(Lens[b], max_pages * PAGE), width), 0)
            nblk = T.ceildiv(n, BN)
            n_mine = T.ceildiv(T.max(nblk - sp, 0), NS)          # compute blocks of this split
            n_all = T.ceildiv(T.ceildiv(width, BN) - sp, NS)      # all column blocks of this split

            for it in T.serial(n_mine):
                blk = sp + it * NS
                for t in T.unroll(PPI):
                    pg = T.min(T.max(PT[b, T.min(blk * PPI + t, max_pages - 1)], 0), npages - 1)
                    base = T.Cast("int64", pg) * st
                    for j, d in T.Parallel(PAGE, DIM):
                        K_s[t * PAGE + j, d] = fp16_of_e4m3(C[base + j * DIM + d])
                    for j in T.Parallel(PAGE):
                        sc_s[t * PAGE + j] = Cf[T.Cast("int64", pg) * st_w + sc_w + j] * UNDO_DECODE
                T.clear(acc)
                T.gemm(K_s, Q_s, acc, transpose_B=True, policy=T.GemmWarpPolicy.FullRow)
                for j, h in T.Parallel(BN, H):
                    acc[j, h] = T.max(acc[j, h], T.float32(0)) * w_s[h]
                T.reduce_sum(acc, tot, dim=1)
                for j in T.Parallel(BN):
                    if blk * BN + j < width:
                        Out[b, blk * BN + j] = T.if_then_else(blk * BN + j < n, tot[j] * sc_s[j], T.float32(0))

            for it in T.serial(T.max(n_all - n_mine, 0)):
                blk = sp + (n_mine + it) * NS
                for j in T.Parallel(BN):
                    if blk * BN + j < width:
                        Out[b, blk * BN + j] = T.float32(0)

    return indexer_logits


#: The shared Ampere-path switches (:mod:`.tilelang_build`), plus ``disable_safe_memory_legalize``:
#: every global index is clamped or guarded in the kernel itself (page ids into the pool,
#: page-table columns into the table, stores by ``col < width``); TileLang's own bounds checks
#: would otherwise turn the 8-byte key loads into byte loads.
PASS_CONFIGS = {**AMPERE_PASS_CONFIGS, "tl.disable_safe_memory_legalize": True}


@functools.lru_cache(maxsize=None)
def compiled(spec: KernelSpec, arch: int):
    """JIT-compile ``spec`` for ``sm_{arch}`` (cached per process; TileLang also caches on disk)."""
    return compile_prim(build(spec), arch, PASS_CONFIGS)


# ---------------------------------------------------------------------------------------------
# Launch wrapper

def choose_splits(rows: int, max_pages: int, sms: int, plan: TilePlan = PLANS[86]) -> int:
    """Splits per row from the shapes alone (CUDA-graph safe): about 4 CTAs per SM (2 resident
    x 2 waves), never more splits than the row can have blocks; 1 once the rows fill the GPU."""
    blocks = max(1, -(-max_pages // plan.pages_per_iter))
    want = max(1, (4 * sms) // max(1, rows))
    return max(s for s in SPLITS if s <= min(want, blocks) or s == 1)


def _flat_pool(kvcache: torch.Tensor) -> tuple[torch.Tensor, int]:
    """The pool's bytes as one 1-D uint8 tensor (no copy) and its page stride in bytes."""
    pages = L.index_pool_pages(kvcache)
    st = pages.stride(0)
    if st % 16 or pages.data_ptr() % 16:
        raise ValueError(f"the index-K pool must be 16-byte aligned with a page stride that is a multiple "
                         f"of 16 bytes (got stride {st}, address mod 16 = {pages.data_ptr() % 16})")
    n = (pages.shape[0] - 1) * st + L.INDEX_PAGE_BYTES
    return torch.as_strided(pages, (n,), (1,), pages.storage_offset()), st


@dataclass(frozen=True)
class Launch:
    """One kernel call, built on any device: the kernel to compile and all its arguments in order
    (the last one is the result ``out [rows, max_seq_len]`` float32, which the kernel fills).

    :func:`indexer_launch` builds it; the CUDA wrapper below and the CPU tile tests
    (``tests/helpers/tile_cpu``, which compile the same :func:`build` for TileLang's CPU target)
    both call ``kernel(*launch.args)``.
    """
    spec: KernelSpec
    args: tuple

    @property
    def out(self) -> torch.Tensor:
        return self.args[-1]


def _check_launchable(q_fp8: torch.Tensor, clean_logits: bool) -> None:
    if clean_logits:
        raise ValueError("clean_logits=True is not supported; entries past each row's length are always 0")
    if q_fp8.ndim != 4 or q_fp8.shape[1] != 1 or q_fp8.shape[3] != DIM:
        raise ValueError(f"q_fp8 must be [rows, 1, heads, {DIM}], got {tuple(q_fp8.shape)}")


def indexer_launch(q_fp8: torch.Tensor, kvcache_fp8: torch.Tensor, weight: torch.Tensor, seq_lens: torch.Tensor,
                   page_table: torch.Tensor, max_seq_len: int, *, plan: TilePlan, num_splits: int | None = None,
                   sms: int | None = None, clean_logits: bool = False) -> Launch:
    """The kernel's spec and arguments for ``paged_mqa_logits_torch``'s arguments (any device).

    The result tensor is allocated here (``torch.empty``: the kernel writes every column). Needs
    at least one row, one column and one page-table column (the wrapper answers those cases
    without a kernel). ``num_splits`` None: :func:`choose_splits` for ``sms`` multiprocessors.
    """
    _check_launchable(q_fp8, clean_logits)
    B, _, H, _ = q_fp8.shape
    W = int(max_seq_len)
    if B == 0 or W == 0 or page_table.shape[1] == 0:
        raise ValueError(f"nothing to launch: {B} rows, max_seq_len {W}, {page_table.shape[1]} page-table columns")
    device = q_fp8.device
    flat, st = _flat_pool(kvcache_fp8)
    words = flat.view(torch.float32)
    q = q_fp8.view(torch.uint8).reshape(B, H, DIM).contiguous()
    w = weight.to(device=device, dtype=torch.float32).contiguous()
    lens = seq_lens.to(device=device, dtype=torch.int32).contiguous()
    pt = page_table.to(device=device, dtype=torch.int32).contiguous()
    if not num_splits:
        if sms is None:
            raise ValueError("give num_splits or the device's SM count (sms) to choose it")
        num_splits = choose_splits(B, pt.shape[1], sms, plan)
    spec = KernelSpec(heads=H, num_splits=int(num_splits), plan=plan, page_stride=st)
    out = torch.empty(B, W, dtype=torch.float32, device=device)
    return Launch(spec, (q, flat, words, w, lens, pt, out))


def paged_mqa_logits_tilelang(q_fp8: torch.Tensor, kvcache_fp8: torch.Tensor, weight: torch.Tensor,
                              seq_lens: torch.Tensor, page_table: torch.Tensor, deep_gemm_metadata,
                              max_seq_len: int, clean_logits: bool = False) -> torch.Tensor:
    """The indexer logits ``[rows, max_seq_len]`` float32 with the TileLang kernel.

    Same positional arguments and result as ``indexer.paged_mqa_logits_torch`` (and SGLang's
    ``fp8_paged_mqa_logits_torch``); ``deep_gemm_metadata`` is ignored. No host synchronisation
    and no data-dependent Python control flow: the split count and the kernel come from the
    shapes only, so the call can be captured in a CUDA graph (after :func:`precompile`).
    """
    if q_fp8.device.type != "cuda":
        raise RuntimeError("the TileLang indexer kernel runs on CUDA only; use the torch path "
                           "(SGLANG_AMPERE_INDEXER_BACKEND=torch) elsewhere")
    _check_launchable(q_fp8, clean_logits)
    B, W = q_fp8.shape[0], int(max_seq_len)
    if B == 0 or W == 0:
        return torch.empty(B, W, dtype=torch.float32, device=q_fp8.device)
    if page_table.shape[1] == 0:
        return torch.zeros(B, W, dtype=torch.float32, device=q_fp8.device)
    arch, sms = device_arch(q_fp8.device)
    launch = indexer_launch(q_fp8, kvcache_fp8, weight, seq_lens, page_table, W, plan=plan_for(arch), sms=sms)
    compiled(launch.spec, arch)(*launch.args)
    return launch.out


def report_specs(arch: int) -> list[KernelSpec]:
    """The kernels ``sglang-ampere kernel-report`` compiles: the prefill kernel (1 split) and a
    split decode kernel (the other split counts differ only in one grid constant)."""
    plan = plan_for(arch)
    return [KernelSpec(num_splits=1, plan=plan), KernelSpec(num_splits=16, plan=plan)]


def serving_specs(arch: int, heads: int = HEADS) -> list[KernelSpec]:
    """Every indexer kernel a DeepSeek-V4-Flash server can launch: one per split count (64
    heads, SGLang's contiguous 8448-byte pages)."""
    plan = plan_for(arch)
    return [KernelSpec(heads=heads, num_splits=ns, plan=plan) for ns in SPLITS]


def precompile(arch: int | None = None, log=None) -> int:
    """JIT-compile :func:`serving_specs` now (before CUDA-graph capture); returns the count.

    TileLang keeps the binaries in its disk cache (``~/.tilelang/cache``), so only the first
    start of a machine pays the compile time (about 10 s per kernel on 2 cores).
    """
    if arch is None:
        arch, _ = device_arch()
    specs = serving_specs(arch)
    for spec in specs:
        compiled(spec, arch)
        if log:
            log(f"compiled {spec.name} for sm_{arch}")
    return len(specs)
