"""A test-only shim that lowers our GPU tile programs for TileLang's CPU target (pinned to 0.1.12).

TileLang 0.1.12 has a CPU target (``"c"``, compiled by g++ through the cython execution backend),
but GPU-style tile programs do not lower there out of the box (fragments have no CPU layout, only
one dynamic shared allocation is allowed, there is no CPU reduce, bfloat16 has no C type,
``tl.infinity`` has no C lowering). Inside :func:`cpu_tile_programs` the *unmodified* ``build()``
of a kernel module lowers and runs on the CPU because this shim:

1. allocates ``T.alloc_fragment`` buffers as ``local`` and ``T.alloc_shared`` buffers as plain
   ``shared`` (one dynamic shared allocation only is allowed on "c"); on-chip bfloat16 buffers
   become float32 (this TVM's BF16StorageLegalize cannot remap a bf16 allocation). Values stored
   there are still rounded to bfloat16 first where the kernel casts them (``T.Cast(BF16, ...)``);
2. lowers ``T.reduce_max`` / ``T.reduce_sum`` (``[rows, cols] -> [rows]`` along dim 1, all our
   kernels use) to serial loops (the "c" target has no reduce lowering);
3. replaces the ``cpu.scalar`` GEMM with one that widens both operands to the accumulator type
   before multiplying (TileLang's rounds each product to the input dtype; mma.sync forms exact
   products);
4. runs 0.1.12's CPU pass pipeline with ``BF16ComputeLegalize`` after ``FlattenBuffer`` and
   ``BF16StorageLegalize`` after ``MakePackedAPI``, and passes bfloat16 tensors to the cython
   wrapper as ``uint16_t``, so bf16 global tensors load exactly and fp32 -> bf16 stores round to
   nearest even;
5. builds ``T.infinity`` from its bit pattern (``tl.infinity`` has no C lowering).

Everything is restored when the block exits. It patches TileLang's private classes, so it refuses
any other TileLang version (:func:`unsupported_reason`); after an upgrade, a failure here means
"update the shim", not "the kernel is wrong". TileLang's disk cache key does not include the shim:
use it only in a process of its own with its own ``TILELANG_CACHE_DIR`` (``runner.py`` does).

What this checks of a kernel: the tile program itself (index and page arithmetic, masks and
bounds guards, the integer FP8/UE8M0 decode, online softmax, sink, split partials, dynamic
shapes, argument order). Not: the CUDA lowering (fragment layouts, thread partitioning, mma.sync,
swizzles, barriers, races, cp.async, shared-memory limits), the bf16 rounding of on-chip buffers
such as the softmax weights (float32 here), or the GPU's fp32 summation order.
"""

from __future__ import annotations

import contextlib
import importlib
import shutil
import struct
import unittest.mock

TILELANG_VERSION = "0.1.12"
#: Added to a kernel module's PASS_CONFIGS on the CPU: g++ has no vec_type<half, 4>(float4).
CPU_PASS_CONFIGS = {"tirx.disable_vectorize": True}
CPU_TARGET = "c"


def unsupported_reason() -> str | None:
    """Why the shim cannot run here (None when it can)."""
    try:
        import tilelang
    except ImportError as e:
        return f"TileLang is not installed ({e})"
    if tilelang.__version__ != TILELANG_VERSION:
        return (f"the tile CPU shim patches TileLang {TILELANG_VERSION} internals; this is TileLang "
                f"{tilelang.__version__} (update tests/helpers/tile_cpu/shim.py)")
    if shutil.which("g++") is None:
        return "g++ is not on PATH (TileLang's CPU target compiles the generated C++ with it)"
    return None


def _serial_reduce(kind: str):
    import tilelang.language as T

    def reduce_fn(buffer, out, dim: int = -1, clear: bool = True, batch: int = 1, nan_propagate: bool = False):
        if len(buffer.shape) != 2 or dim not in (1, -1) or len(out.shape) != 1:
            raise NotImplementedError(f"the tile CPU shim reduces [rows, cols] -> [rows] along dim 1 only; got "
                                      f"{list(buffer.shape)} -> {list(out.shape)} dim {dim}")
        rows, cols = buffer.shape

        @T.macro
        def serial(src, dst):
            for i in T.serial(rows):
                if clear:
                    dst[i] = T.cast(0, dst.dtype) if kind == "sum" else _neg_inf(dst.dtype)
                for j in T.serial(cols):
                    if kind == "sum":
                        dst[i] = dst[i] + src[i, j]
                    else:
                        dst[i] = T.max(dst[i], src[i, j])

        serial(buffer, out)

    reduce_fn.__name__ = f"reduce_{kind}"
    return reduce_fn


def _neg_inf(dtype):
    return -_infinity(str(dtype))


def _infinity(dtype: str, span=None):
    import tilelang.language as T

    if dtype == "float32":
        return T.reinterpret(T.uint32(0x7F800000), "float32")
    if dtype == "float16":
        return T.reinterpret(T.uint16(0x7C00), "float16")
    if dtype == "float64":
        return T.reinterpret(T.uint64(struct.unpack("<Q", struct.pack("<d", float("inf")))[0]), "float64")
    raise NotImplementedError(f"T.infinity({dtype}) in the tile CPU shim")


def _exact_gemm_class():
    from tilelang import language as T
    from tilelang.cpu.op.gemm.gemm_scalar import GemmScalar

    class ExactGemmScalar(GemmScalar):
        """``C += widen(A) * widen(B)``: exact products, as mma.sync forms them."""

        def lower(self, layout_map, target, thread_bounds, thread_var, mbar_phase_expr=None):
            M, N, K = self.M, self.N, self.K
            A_buf, B_buf, C_buf = self.ARegion.buffer, self.BRegion.buffer, self.CRegion.buffer
            trans_A, trans_B, clear_accum, acc = self.trans_A, self.trans_B, self.clear_accum, self.accum_dtype
            a0, a1 = self.ARegion.region[0].min, self.ARegion.region[1].min
            b0, b1 = self.BRegion.region[0].min, self.BRegion.region[1].min
            c0, c1 = self.CRegion.region[0].min, self.CRegion.region[1].min

            @T.prim_func
            def _gemm_exact() -> None:
                if clear_accum:
                    T.clear(C_buf)
                for i, j, k in T.grid(M, N, K):
                    C_buf[c0 + i, c1 + j] += (
                        T.cast(A_buf[a0 + (k if trans_A else i), a1 + (i if trans_A else k)], acc)
                        * T.cast(B_buf[b0 + (j if trans_B else k), b1 + (k if trans_B else j)], acc))

            return _gemm_exact

    return GemmScalar, ExactGemmScalar


def _followed_by(make_pass, extra):
    """``make_pass`` whose pass is followed by the pass ``extra()``."""

    def make(*args, **kwargs):
        first = make_pass(*args, **kwargs)
        return lambda mod: extra()(first(mod))

    return make


def _cpu_pipeline_with_bf16(mod, target):
    """TileLang 0.1.12's own ``CPUPassPipelineBody``, with ``BF16ComputeLegalize`` run after
    ``FlattenBuffer`` and ``BF16StorageLegalize`` after ``MakePackedAPI``: it looks both passes up
    in ``tilelang.transform`` as it runs, so they are swapped there for the call."""
    import tilelang
    from tilelang.cpu.pipeline import CPUPassPipelineBody
    from tvm import tirx

    tl = tilelang.transform
    after = {"FlattenBuffer": tirx.transform.BF16ComputeLegalize, "MakePackedAPI": tirx.transform.BF16StorageLegalize}
    with unittest.mock.patch.multiple(tl, **{name: _followed_by(getattr(tl, name), extra)
                                             for name, extra in after.items()}):
        return CPUPassPipelineBody(mod, target)


@contextlib.contextmanager
def cpu_tile_programs():
    """Within this block, ``build()`` + :func:`compile_cpu` give CPU kernels (see the module doc)."""
    reason = unsupported_reason()
    if reason:
        raise RuntimeError(reason)
    import tilelang.language as T
    from tilelang.backend.pass_pipeline import PassPipeline, register_pipeline
    from tilelang.backend.pass_pipeline.pipeline import get_pipeline
    from tilelang.cpu.op.gemm import GEMM_INST_SCALAR, _match_scalar
    from tilelang.jit.adapter.wrapper import TLCPUSourceWrapper
    from tilelang.tileop.gemm.registry import register_gemm_impl

    allocate = importlib.import_module("tilelang.language.allocate")   # T.allocate is another thing

    def on_chip(dtype):
        return "float32" if str(dtype) == "bfloat16" else dtype

    def alloc_shared(shape, dtype, scope="shared.dyn"):
        return allocate.alloc_local(shape, on_chip(dtype), scope="shared")

    def alloc_fragment(shape, dtype, scope="local.fragment"):
        return allocate.alloc_local(shape, on_chip(dtype))

    patched = {"alloc_shared": alloc_shared, "alloc_fragment": alloc_fragment,
               "reduce_max": _serial_reduce("max"), "reduce_sum": _serial_reduce("sum"), "infinity": _infinity}
    saved = {name: getattr(T, name) for name in patched}
    saved_pipeline = get_pipeline(CPU_TARGET)
    saved_types = dict(TLCPUSourceWrapper._TYPE_MAP)
    gemm_scalar, exact = _exact_gemm_class()
    try:
        for name, fn in patched.items():
            setattr(T, name, fn)
        register_pipeline(PassPipeline(CPU_TARGET, _cpu_pipeline_with_bf16))
        TLCPUSourceWrapper._TYPE_MAP = {**saved_types, "bfloat16": "uint16_t"}
        register_gemm_impl("cpu.scalar", GEMM_INST_SCALAR, _match_scalar, exact)
        yield
    finally:
        for name, fn in saved.items():
            setattr(T, name, fn)
        register_pipeline(saved_pipeline)
        TLCPUSourceWrapper._TYPE_MAP = saved_types
        register_gemm_impl("cpu.scalar", GEMM_INST_SCALAR, _match_scalar, gemm_scalar)


def compile_cpu(prim_func, pass_configs):
    """Compile a tile program built inside :func:`cpu_tile_programs` for the CPU (g++ via cython)."""
    import tilelang

    return tilelang.compile(prim_func, target=CPU_TARGET, execution_backend="cython",
                            pass_configs={**dict(pass_configs), **CPU_PASS_CONFIGS})
