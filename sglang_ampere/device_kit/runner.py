"""The device kit's runner: every GPU kernel checked and timed on a bare GPU machine, one command.

    python -m sglang_ampere.device_kit.runner --kit device-kit --out OUT [--budget-s 450]

Needs Python + torch + numpy and the kit (``sglang-ampere device-kit --out device-kit``); no
SGLang, no TileLang, no network. tvm-ffi (for the Marlin modules) comes from the kit's wheel,
installed by the one-line command in ``docs/device-kit.md``. Run from the repository root (or
give ``--repo``): the checks and references are the repository's own modules.

Sections, each check recorded with its detail or its error and traceback, the run carrying on:

1. ``tilelang``: :func:`sglang_ampere.kernels.selfchecks.gpu_checks` unchanged (sparse MLA dense
   and paged, the C4 indexer, against the torch references computed on the device with the
   project's tolerances), with ``compiled()`` of both kernel modules answered by the kit's cubins
   (:class:`.runtime.CubinKernel`), once per variant the kit holds (sm_86 source; optionally sm_90).
2. ``tilelang-timing``: each kernel against the torch fallback on the same card, plus gathered
   bytes per second against the card's measured copy bandwidth (attention) and a bf16 GEMM with
   the same FLOPs (indexer).
3. ``marlin``: SGLang's Marlin modules through SGLang's own Python wrappers (vendored in the kit)
   with the Ampere settings (``use_atomic_add=False``, the sm_86 dispatch table): dsv4_int W8A16
   dense (group 128 and per-channel) and W4A16 MoE, native FP8 dense and MXFP4 MoE, against
   :mod:`~sglang_ampere.quant.int8_reference`, :mod:`~sglang_ampere.quant.int4_reference`,
   :mod:`~sglang_ampere.quant.native_linear` and :mod:`~sglang_ampere.quant.moe_reference`.
4. ``marlin-timing``: each GEMM against a bf16 ``F.linear`` of the same shape (and decode bytes
   per second against the copy bandwidth).

Stays inside ``--budget-s``: a check is skipped (and listed) once less than ``--min-left-s`` is
left. Writes ``OUT/kit_result.json`` after every check and ``OUT/kit_summary.md`` at the end.

``--dry-run`` runs on CPU: TileLang requests are bound to the kit's manifests and marshalled to a
recording driver (no kernel runs), the Marlin modules are torch stand-ins (:mod:`.standins`);
``--plant-bug`` makes a stand-in wrong (its checks must FAIL).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import platform
import sys
import time
import traceback
from pathlib import Path
from types import SimpleNamespace
from typing import Callable
from unittest import mock

from .. import envvars

DEFAULT_BUDGET_S = 450.0
MIN_LEFT_S = 20.0
SECTIONS = ("tilelang", "tilelang-timing", "marlin", "marlin-timing")


class DryRunLaunched(Exception):
    """Raised by the dry run's kernels after binding and marshalling (no kernel runs on CPU)."""


class Report:
    """The result file, rewritten after every check."""

    def __init__(self, out: Path, budget_s: float, min_left_s: float = MIN_LEFT_S):
        self.out = Path(out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.t0 = time.monotonic()
        self.budget_s = budget_s
        self.min_left_s = min_left_s
        self.data = {"env": {}, "checks": [], "timings": [], "skipped": [], "errors": [], "kernels_requested": []}

    def left(self) -> float:
        return self.budget_s - (time.monotonic() - self.t0)

    def write(self) -> None:
        self.data["elapsed_s"] = round(time.monotonic() - self.t0, 1)
        tmp = self.out / "kit_result.json.tmp"
        tmp.write_text(json.dumps(self.data, indent=1, default=str))
        tmp.replace(self.out / "kit_result.json")

    def check(self, section: str, name: str, fn: Callable[[], str]) -> bool:
        rec = self._run("checks", section, name, lambda: {"ok": True, "detail": str(fn())}, {"ok": False})
        if rec is None:
            return False
        print(f"[{section}] {'PASS' if rec['ok'] else 'FAIL'} {name} ({rec['s']} s): "
              f"{rec.get('detail', rec.get('error'))}", flush=True)
        self.write()
        return rec["ok"]

    def timing(self, section: str, name: str, fn: Callable[[], dict]) -> None:
        rec = self._run("timings", section, name, fn, {})
        if rec is None:
            return
        print(f"[{section}] {name}: " + ", ".join(f"{k} {v}" for k, v in rec.items()
                                                  if k not in ("section", "name", "traceback")), flush=True)
        self.write()

    def _run(self, kind: str, section: str, name: str, fn: Callable[[], dict], failed: dict) -> dict | None:
        """Run ``fn`` and append its record (its fields, or ``failed`` and the error) to ``data[kind]``;
        None, the check listed as skipped, once the time budget is spent."""
        if self.left() < self.min_left_s:
            self.data["skipped"].append({"section": section, "name": name, "why": "time budget"})
            self.write()
            return None
        t = time.monotonic()
        rec = {"section": section, "name": name}
        try:
            rec.update(fn())
        except Exception as e:  # every failure is recorded with its traceback; the run goes on
            rec.update(failed, error=f"{type(e).__name__}: {e}", traceback=traceback.format_exc()[-6000:])
        rec["s"] = round(time.monotonic() - t, 2)
        self.data[kind].append(rec)
        return rec

    def error(self, section: str, what: str, e: BaseException) -> None:
        self.data["errors"].append({"section": section, "what": what, "error": f"{type(e).__name__}: {e}",
                                    "traceback": traceback.format_exc()[-6000:]})
        print(f"[{section}] ERROR {what}: {type(e).__name__}: {e}", flush=True)
        self.write()


# ---------------------------------------------------------------------------------------------
# Environment

def environment(dry_run: bool) -> dict:
    import torch

    env = {"python": sys.version.split()[0], "platform": platform.platform(), "torch": torch.__version__,
           "torch_cuda": torch.version.cuda, "dry_run": dry_run,
           "dlpack_c_exchange_api": hasattr(torch.Tensor, "__dlpack_c_exchange_api__"),
           envvars.TARGET: os.environ.get(envvars.TARGET)}
    if not dry_run:
        props = torch.cuda.get_device_properties(0)
        env.update(device=torch.cuda.get_device_name(0), capability=list(torch.cuda.get_device_capability(0)),
                   sms=props.multi_processor_count, memory_gib=round(props.total_memory / 2 ** 30, 1))
        try:
            lib = ctypes.CDLL("libcuda.so.1")
            v = ctypes.c_int()
            lib.cuDriverGetVersion(ctypes.byref(v))
            env["driver_cuda_version"] = v.value
        except OSError as e:
            env["driver_cuda_version"] = f"unknown ({e})"
    try:
        import tvm_ffi

        env["tvm_ffi"] = getattr(tvm_ffi, "__version__", "?")
    except ImportError as e:
        env["tvm_ffi"] = f"not importable ({e})"
    return env


def copy_bandwidth(device) -> float:
    """Device-to-device copy GB/s (read + write) of a 512 MiB buffer: the yardstick for bytes moved."""
    import torch

    a = torch.empty(512 * 2 ** 20, dtype=torch.uint8, device=device)
    b = torch.empty_like(a)
    ms = time_cuda(lambda: b.copy_(a), iters=10)
    return 2 * a.numel() / (ms * 1e-3) / 1e9


def time_cuda(fn: Callable[[], object], iters: int = 20, warmup: int = 2) -> float:
    """Median milliseconds of ``fn`` with CUDA events (host timer on CPU)."""
    import torch

    for _ in range(warmup):
        fn()
    times = []
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        for _ in range(iters):
            s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            s.record()
            fn()
            e.record()
            e.synchronize()
            times.append(s.elapsed_time(e))
    else:
        for _ in range(iters):
            t = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t) * 1e3)
    times.sort()
    return times[len(times) // 2]


# ---------------------------------------------------------------------------------------------
# TileLang: the project's checks with the kit's kernels

class RecordingDriver:
    """A driver that records module loads and launches (the dry run's; never touches a GPU)."""

    def __init__(self):
        self.launches: list[dict] = []

    def ensure_context(self, ordinal):
        return 1

    def load(self, image, entry):
        if image[:4] != b"\x7fELF":
            raise ValueError(f"{entry}: the cubin is not an ELF image")
        return 1, 1

    def set_max_dynamic_shared(self, fn, nbytes):
        pass

    def launch(self, fn, grid, block, shared, stream, values):
        self.launches.append({"grid": list(grid), "block": list(block), "shared": shared,
                              "params": [v.value for v in values]})
        raise DryRunLaunched(f"grid {list(grid)} block {list(block)} smem {shared}, {len(values)} parameters")


class KitKernels:
    """``compiled(spec, arch)`` answered from the kit's cubins (one :class:`CubinKernel` per spec)."""

    def __init__(self, kit: Path, manifests: list, arch: int, driver=None, require_cuda: bool = True,
                 stream=None):
        from .runtime import CubinKernel, _torch_stream

        self.kit, self.arch = Path(kit), arch
        self.by_key = {m.key: m for m in manifests}
        self.requested: list[str] = []
        self._kernels: dict[str, CubinKernel] = {}
        self._make = lambda m: CubinKernel(m, self.kit / m.cubin, driver, stream or _torch_stream, require_cuda)

    def __call__(self, spec, arch: int):
        key = repr(spec)
        self.requested.append(spec.name)
        if key not in self.by_key:
            raise KeyError(f"the kit has no kernel for {spec.name} ({key}); rebuild it with this repository's "
                           "kernels (sglang-ampere device-kit)")
        if arch != self.arch:
            raise ValueError(f"{spec.name} requested for sm_{arch}, the kit's cubins are sm_{self.arch}")
        if key not in self._kernels:
            self._kernels[key] = self._make(self.by_key[key])
        return self._kernels[key]


@contextlib.contextmanager
def kit_kernels_in_place(kernels: KitKernels, dry_run: bool, sms: int):
    """Swap ``compiled`` of both TileLang modules for the kit's; on a dry run also let the launch
    builders run on CPU tensors (device checks off, the device answers ``(arch, sms)``)."""
    import torch

    from ..kernels import indexer as I
    from ..kernels import selfchecks as G
    from ..kernels import tilelang_indexer as TI
    from ..kernels import tilelang_mla as M

    with contextlib.ExitStack() as stack:
        stack.enter_context(mock.patch.object(M, "compiled", kernels))
        stack.enter_context(mock.patch.object(TI, "compiled", kernels))
        if dry_run:
            arch = kernels.arch
            stack.enter_context(mock.patch.object(G, "_require_cuda", lambda: torch.device("cpu")))
            stack.enter_context(mock.patch.object(M, "_require_cuda", lambda q: None))
            stack.enter_context(mock.patch.object(M, "device_arch", lambda device=None: (arch, sms)))
            stack.enter_context(mock.patch.object(TI, "device_arch", lambda device=None: (arch, sms)))

            def indexer_on_cpu(q, kv, weight, lens, table, meta, max_seq_len, clean_logits=False):
                launch = TI.indexer_launch(q, kv, weight, lens, table, max_seq_len, plan=TI.plan_for(arch), sms=sms,
                                           clean_logits=clean_logits)
                kernels(launch.spec, arch)(*launch.args)
                return launch.out

            stack.enter_context(mock.patch.object(I, "paged_mqa_logits_tilelang", indexer_on_cpu))
        yield


class _Recorder:
    """A ``compiled`` that records each requested spec and stops the check (see :func:`requested_kernels`)."""

    def __init__(self, arch: int):
        self.arch = arch
        self.requested: list[tuple[str, str, str]] = []
        self.check = ""

    def __call__(self, spec, arch: int):
        self.requested.append((self.check, spec.name, repr(spec)))
        raise DryRunLaunched(spec.name)


def requested_kernels(arch: int = 90, sms: int = 132) -> list[tuple[str, str, str]]:
    """``(check, kernel name, repr(spec))`` of every TileLang kernel that ``kernels.selfchecks`` requests
    on an ``sm_{arch}`` card with ``sms`` multiprocessors under ``SGLANG_AMPERE_TARGET=ampere``.

    Computed on CPU: each check builds its inputs (CPU tensors, the real shapes) and the launch
    builders pick the kernel; the first kernel call stops the check. About 15 s."""
    from ..kernels import selfchecks as G

    os.environ.setdefault(envvars.TARGET, "ampere")
    rec = _Recorder(arch)
    with kit_kernels_in_place(rec, True, sms):
        for name, fn in G.gpu_checks():
            rec.check = name
            try:
                fn()
            except DryRunLaunched:
                continue
            raise RuntimeError(f"{name}: the check finished without requesting a TileLang kernel")
    return rec.requested


def tilelang_section(report: Report, kit: Path, kit_data: dict, dry_run: bool, only: str | None,
                     sms: int) -> None:
    from ..kernels import selfchecks as G

    manifests = kit_data["tilelang"]
    arch = kit_data["arch"]
    variants = sorted({m.source_arch for m in manifests})
    for variant in variants:
        mans = [m for m in manifests if m.source_arch == variant]
        section = f"tilelang sm_{variant}->sm_{arch}"
        driver = RecordingDriver() if dry_run else None
        kernels = KitKernels(kit, mans, arch, driver=driver, require_cuda=not dry_run,
                             stream=(lambda device: 0) if dry_run else None)
        with kit_kernels_in_place(kernels, dry_run, sms):
            for name, fn in G.gpu_checks():
                if only and only not in name:
                    continue
                report.check(section, name, _dry_wrap(fn) if dry_run else fn)
        report.data["kernels_requested"].append({"variant": variant, "kernels": sorted(set(kernels.requested))})
        if not dry_run and variant == variants[0]:
            report.write()


def _dry_wrap(fn: Callable[[], str]) -> Callable[[], str]:
    def run() -> str:
        try:
            fn()
        except DryRunLaunched as e:
            return f"dry run: inputs bound to the manifest and marshalled ({e})"
        raise RuntimeError("dry run: the check finished without launching a kit kernel")
    return run


def tilelang_timings(report: Report, kit: Path, kit_data: dict, bandwidth: float, iters: int) -> None:
    import torch

    from ..kernels import indexer as I
    from ..kernels import kv_layout as L
    from ..kernels import selfchecks as G
    from ..kernels import sparse_mla as S

    mans = [m for m in kit_data["tilelang"] if m.source_arch == min(m.source_arch for m in kit_data["tilelang"])]
    kernels = KitKernels(kit, mans, kit_data["arch"])
    dev = torch.device("cuda")
    with kit_kernels_in_place(kernels, False, 0):
        for ratio, ctx, tokens, decode in ((4, 65536, 32, True), (128, 65536, 32, True), (4, 16384, 1024, False)):
            kind = "decode" if decode else "prefill"

            def paged(ratio=ratio, ctx=ctx, tokens=tokens, decode=decode):
                kw = G.paged_case(tokens, ctx, ratio, 5, dev, decode)
                ms = time_cuda(lambda: S.sparse_mla_paged_tilelang(**kw), iters)
                ms_torch = time_cuda(lambda: S.sparse_mla_paged_torch(**kw), max(3, iters // 4))
                rows = int(kw["topk_length"].clamp(min=0).sum()) + int(kw["extra_topk_length"].clamp(min=0).sum())
                gathered = rows * L.TOKEN_BYTES          # each candidate row is read once per token
                flops = 2 * 2 * rows * G.HEADS * L.HEAD_DIM
                return {"tilelang_ms": round(ms, 3), "torch_ms": round(ms_torch, 3),
                        "speedup_vs_torch": round(ms_torch / ms, 2),
                        "gathered_GBps": round(gathered / (ms * 1e-3) / 1e9, 1),
                        "copy_GBps": round(bandwidth, 1),
                        "TFLOPs": round(flops / (ms * 1e-3) / 1e12, 2)}
            report.timing("tilelang-timing", f"paged {kind} c{ratio} ({tokens} tokens, ctx {ctx // 1024}k)", paged)
        for rows, ctx, decode in ((32, 65536, True), (4096, 16384, False)):
            def indexer(rows=rows, ctx=ctx, decode=decode):
                args = G.indexer_case(rows, ctx, 6, dev, decode)
                ms = time_cuda(lambda: I.paged_mqa_logits_tilelang(*args), iters)
                ms_torch = time_cuda(lambda: I.paged_mqa_logits_torch(*args), max(3, iters // 4))
                entries = int(args[3].clamp(min=0).sum())
                flops = 2 * entries * G.HEADS * L.INDEX_DIM
                a = torch.randn(rows * G.HEADS, L.INDEX_DIM, device=dev, dtype=torch.bfloat16)
                b = torch.randn(L.INDEX_DIM, max(1, entries // rows), device=dev, dtype=torch.bfloat16)
                ms_mm = time_cuda(lambda: a @ b, iters)
                return {"tilelang_ms": round(ms, 3), "torch_ms": round(ms_torch, 3),
                        "speedup_vs_torch": round(ms_torch / ms, 2), "bf16_gemm_same_flops_ms": round(ms_mm, 3),
                        "TFLOPs": round(flops / (ms * 1e-3) / 1e12, 2)}
            report.timing("tilelang-timing", f"indexer {'decode' if decode else 'prefill'} ({rows} rows, "
                          f"ctx {ctx // 1024}k)", indexer)


# ---------------------------------------------------------------------------------------------
# Marlin: SGLang's modules through SGLang's wrappers (vendored), the Ampere settings

class MarlinOps:
    """The vendored wrappers, the scalar types and SGLang's weight preparation, from the kit."""

    def __init__(self, kit: Path, kit_data: dict, dry_run: bool, bug: str | None = None):
        from . import shim

        if str(kit) not in sys.path:
            sys.path.insert(0, str(kit))
        shim.configure(kit)
        marlin = kit_data.get("marlin") or {}
        self.type_ids = marlin.get("scalar_type_ids") or {}
        if dry_run:
            from . import standins

            shim.set_modules({}, loader=lambda name: standins.standin_for(name, self.type_ids, bug))
        import importlib

        self.gemm = importlib.import_module("sgl_ops.gptq_marlin")
        self.moe = importlib.import_module("sgl_ops.moe_wna16_marlin")
        self.repack = importlib.import_module("sgl_ops.gptq_marlin_repack")
        self.align = importlib.import_module("sgl_ops.moe_align")
        self.prep = importlib.import_module("sgl_ops.marlin_prep")
        st = importlib.import_module("sgl_ops.scalar_type").scalar_types
        self.types = SimpleNamespace(uint8b128=st.uint8b128, uint4b8=st.uint4b8, float8_e4m3fn=st.float8_e4m3fn,
                                     float4_e2m1f=st.float4_e2m1f)
        for n, want in self.type_ids.items():
            if getattr(self.types, n).id != want:
                raise RuntimeError(f"scalar type {n}: the vendored id {getattr(self.types, n).id} differs from "
                                   f"kit.json's {want}")

    # -- dense ---------------------------------------------------------------------------------
    def dense_weights(self, strategy: str, n: int, k: int, gen, device):
        """Random dsv4_int codes and scales (as quant.selfchecks.make_int8_layer draws them), and
        the Marlin tensors our method makes from them (int8_linear._prepare_marlin)."""
        import torch

        from ..quant import marlin_layout

        if strategy == "block":
            q = torch.randint(-127, 128, (n, k), generator=gen, dtype=torch.int8)
            s = ((torch.rand((n + 127) // 128, (k + 127) // 128, generator=gen) + 0.5) * 2.0 ** -7).bfloat16()
            gptq = marlin_layout.int8_block_to_gptq(q)
            groups = marlin_layout.block_scales_to_groups(s, n, k)
            group = 128
        else:
            q = torch.randint(1, 256, (n, k), generator=gen, dtype=torch.int16).to(torch.uint8)
            s = ((torch.rand(n, generator=gen) + 0.5) * 2.0 ** -7).bfloat16()
            gptq = marlin_layout.uint8_channel_to_gptq(q)
            groups = marlin_layout.channel_scales_to_groups(s, n)
            group = -1
        perm = torch.empty(0, dtype=torch.int32, device=device)
        qweight = self.repack.gptq_marlin_repack(gptq.to(device), perm, size_k=k, size_n=n, num_bits=8)
        scales = self.prep.marlin_permute_scales(groups.to(device), size_k=k, size_n=n, group_size=group)
        return (q, s), (qweight, scales, self.prep.marlin_make_workspace(device))

    def dense_apply(self, x, marlin, n: int, k: int, wtype):
        """``apply_gptq_marlin_linear`` / ``apply_fp8_marlin_linear`` with the sm_8x reduce settings."""
        import torch

        qweight, scales, workspace = marlin
        empty = torch.empty(0, dtype=torch.int32, device=x.device)
        return self.gemm.gptq_marlin_gemm(x, None, qweight, scales, None, empty, empty, empty, workspace, wtype,
                                          size_m=x.shape[0], size_n=n, size_k=k, is_k_full=True,
                                          use_atomic_add=False, use_fp32_reduce=True, is_zp_float=False)

    def fp8_layer(self, n: int, k: int, gen, device):
        """SGLang's ``prepare_fp8_layer_for_marlin`` (vendored) on a layer holding native FP8 codes and
        E8M0-valued 128x128 block scales (as quant.native_selfchecks.make_fp8_layer draws them)."""
        import torch

        from ..quant.native_selfchecks import _E4M3_NAN, _e8m0_bytes

        codes = torch.randint(0, 256, (n, k), generator=gen, dtype=torch.int32).to(torch.uint8)
        codes[(codes == _E4M3_NAN[0]) | (codes == _E4M3_NAN[1])] = 0x3F
        nb, kb = -(-n // 128), -(-k // 128)
        scale = torch.ldexp(torch.ones(nb, kb), _e8m0_bytes((nb, kb), 118, 124, gen).to(torch.int32) - 127)
        layer = torch.nn.Module()
        layer.weight = torch.nn.Parameter(codes.view(torch.float8_e4m3fn).to(device), requires_grad=False)
        layer.weight_scale_inv = torch.nn.Parameter(scale.to(device), requires_grad=False)
        layer.output_size_per_partition, layer.input_size_per_partition = n, k
        layer.weight_block_size = [128, 128]
        layer.orig_dtype = torch.bfloat16
        original = (codes.view(torch.float8_e4m3fn).clone(), scale.clone())
        self.prep.prepare_fp8_layer_for_marlin(layer, False)      # Fp8LinearMethod: size_k_first = not block_quant
        return original, (layer.weight, layer.weight_scale, layer.workspace)

    def dense_layer(self, fmt: str, n: int, k: int, gen, device):
        """``(original, marlin, wtype)`` of a random dense layer: ``fmt`` "fp8" (native,
        :meth:`fp8_layer`) or a dsv4_int strategy, "block" / "channel" (:meth:`dense_weights`)."""
        if fmt == "fp8":
            return (*self.fp8_layer(n, k, gen, device), self.types.float8_e4m3fn)
        return (*self.dense_weights(fmt, n, k, gen, device), self.types.uint8b128)

    # -- MoE -----------------------------------------------------------------------------------
    def moe_layer(self, fmt: str, shape: dict, gen, device) -> SimpleNamespace:
        """A random MoE layer, ``fmt`` "int4" (dsv4_int W4A16, :meth:`int4_experts`) or "mxfp4"
        (native, :meth:`mxfp4_experts`): ``original`` ``(w13, s13, w2, s2)``, ``marlin`` (the four
        :meth:`fused_moe` tensors), ``wtype``, ``dequantize`` (one expert's codes and scales to float)
        and ``routed_scaling``, the factor :meth:`fused_moe` applies to the sum (dsv4_int's; None for
        native, whose path folds it into the top-k weights)."""
        if fmt == "int4":
            from ..quant import selfchecks as Q
            from ..quant.int4_reference import dequantize_expert

            original, marlin = self.int4_experts(shape, gen, device)
            return SimpleNamespace(original=original, marlin=marlin, wtype=self.types.uint4b8,
                                   dequantize=dequantize_expert, routed_scaling=Q.ROUTED_SCALING)
        from ..formats import mxfp4_dequantize

        original, marlin = self.mxfp4_experts(shape, gen, device)
        return SimpleNamespace(original=original, marlin=marlin, wtype=self.types.float4_e2m1f,
                               dequantize=mxfp4_dequantize, routed_scaling=None)

    def moe_align(self, topk_ids, block_size: int, num_experts: int):
        """``moe_align_block_size(..., return_inactive_prefix_count=True)`` of SGLang's
        ``moe_runner/triton_utils/moe_align_block_size.py`` for E + 1 <= 64 buckets: the JIT align."""
        import torch

        numel = topk_ids.numel()
        if numel < num_experts + 1:
            max_padded = numel * block_size
        else:
            max_padded = numel + (num_experts + 1) * (block_size - 1)
        max_padded = (max_padded + 3) // 4 * 4
        dev = topk_ids.device
        sorted_ids = torch.empty((max_padded,), dtype=torch.int32, device=dev)
        expert_ids = torch.empty((-(-max_padded // block_size),), dtype=torch.int32, device=dev)
        num_post = torch.empty((2,), dtype=torch.int32, device=dev)
        cumsum = torch.empty((num_experts + 2,), dtype=torch.int32, device=dev)
        self.align.moe_align_block_size(topk_ids, num_experts + 1, block_size, sorted_ids, expert_ids, num_post,
                                        cumsum, True, write_inactive_prefix_count=True)
        return sorted_ids, expert_ids, num_post

    def fused_moe(self, x, w13, s13, w2, s2, topk_weights, topk_ids, wtype, swiglu_limit, routed_scaling):
        """``fused_marlin_moe`` (SGLang 0.5.23, fused_marlin_moe.py 240-445) without expert parallelism,
        with ``use_atomic_add=False``: block size, align, GEMM1, SwiGLU with clamp, GEMM2 with the top-k
        weights, sum over top-k (times the routed scaling factor when given)."""
        import torch

        from ..quant.moe_reference import swiglu

        M, K = x.shape
        E = w13.shape[0]
        N = w2.shape[1] * 16
        topk = topk_ids.shape[1]
        for block_size_m in (8, 16, 32, 48, 64):
            if M * topk / E / block_size_m < 0.9:
                break
        sorted_ids, expert_ids, num_post = self.moe_align(topk_ids, block_size_m, E)
        sms = torch.cuda.get_device_properties(x.device).multi_processor_count
        workspace = torch.zeros(min((max(2 * N, K) // 64) * (sorted_ids.size(0) // block_size_m), sms * 4),
                                dtype=torch.int, device=x.device)
        common = dict(workspace=workspace, sorted_token_ids=sorted_ids, expert_ids=expert_ids,
                      num_tokens_post_padded=num_post, topk_weights=topk_weights, moe_block_size=block_size_m,
                      is_ep=False, expert_ids_are_sorted=True, has_inactive_prefix_count=True, b_q_type=wtype,
                      is_k_full=True, use_atomic_add=False, use_fp32_reduce=True, is_zp_float=False)
        h = self.moe.moe_wna16_marlin_gemm(x, None, w13, None, s13, None, None, None, None, top_k=topk,
                                           mul_topk_weights=False, size_m=M, size_n=2 * N, size_k=K, **common)
        act = swiglu(h.view(-1, 2 * N).float(), swiglu_limit).to(x.dtype)
        out3 = torch.empty(M * topk, K, dtype=x.dtype, device=x.device)   # as SGLang's intermediate_cache3
        y = self.moe.moe_wna16_marlin_gemm(act, out3, w2, None, s2, None, None, None, None, top_k=1,
                                           mul_topk_weights=True, zero_inactive_output=True, size_m=M * topk,
                                           size_n=K, size_k=N, **common).view(M, topk, K)
        out = y.float().sum(1)
        if routed_scaling is not None:
            out = out * routed_scaling
        return out.to(x.dtype)

    def int4_experts(self, shape: dict, gen, device):
        """Random uint4b8 experts (as quant.selfchecks.make_moe_layer draws them) and their Marlin form
        (int4_moe._prepare_marlin: per-expert repack and group-32 scale permutation)."""
        import torch

        from ..quant import marlin_layout

        E, H, I = shape["experts"], shape["hidden"], shape["inter"]
        w13 = torch.randint(-128, 128, (E, 2 * I, H // 2), generator=gen, dtype=torch.int8)
        w2 = torch.randint(-128, 128, (E, H, I // 2), generator=gen, dtype=torch.int8)
        s13 = ((torch.rand(E, 2 * I, H // 32, generator=gen) + 0.5) * 2.0 ** -6).bfloat16()
        s2 = ((torch.rand(E, H, I // 32, generator=gen) + 0.5) * 2.0 ** -6).bfloat16()
        perm = torch.empty(0, dtype=torch.int32, device=device)

        def repack(w, n, k):
            return torch.stack([self.repack.gptq_marlin_repack(marlin_layout.int4_to_gptq(w[e]).to(device), perm,
                                                               size_k=k, size_n=n, num_bits=4)
                                for e in range(E)])

        def permute(s, n, k):
            g = marlin_layout.expert_scales_to_groups(s)
            return torch.stack([self.prep.marlin_permute_scales(g[e].to(device), size_k=k, size_n=n, group_size=32)
                                for e in range(E)])

        marlin = (repack(w13, 2 * I, H), permute(s13, 2 * I, H), repack(w2, H, I), permute(s2, H, I))
        return (w13, s13, w2, s2), marlin

    def mxfp4_experts(self, shape: dict, gen, device):
        """Random E2M1 codes and E8M0 scales (as quant.native_selfchecks.make_mxfp4_moe_layer draws them),
        through SGLang's ``prepare_moe_mxfp4_layer_for_marlin`` (vendored)."""
        import torch

        from ..quant.native_selfchecks import _e8m0_bytes, _scale_byte

        E, H, I = shape["experts"], shape["hidden"], shape["inter"]
        layer = torch.nn.Module()
        w13 = torch.randint(-128, 128, (E, 2 * I, H // 2), generator=gen, dtype=torch.int8)
        w2 = torch.randint(-128, 128, (E, H, I // 2), generator=gen, dtype=torch.int8)
        b13, b2 = _scale_byte(H), _scale_byte(I)
        s13 = _e8m0_bytes((E, 2 * I, H // 32), b13 - 1, b13, gen).view(torch.float8_e8m0fnu)
        s2 = _e8m0_bytes((E, H, I // 32), b2 - 1, b2, gen).view(torch.float8_e8m0fnu)
        for name, t in (("w13_weight", w13), ("w2_weight", w2), ("w13_weight_scale_inv", s13),
                        ("w2_weight_scale_inv", s2)):
            setattr(layer, name, torch.nn.Parameter(t.to(device), requires_grad=False))
        layer.orig_dtype = torch.bfloat16
        self.prep.prepare_moe_mxfp4_layer_for_marlin(layer)
        return (w13, s13, w2, s2), (layer.w13_weight, layer.w13_weight_scale, layer.w2_weight, layer.w2_weight_scale)


def _moe_input(m: int, shape: dict, gen, device, weight_scale: float = 1.0):
    """The inputs of quant.selfchecks.random_moe_input without SGLang's TopKOutput class."""
    import torch

    x = (3.0 * torch.randn(m, shape["hidden"], generator=gen)).to(device=device, dtype=torch.bfloat16)
    logits = torch.randn(m, shape["experts"], generator=gen)
    ids = logits.topk(shape["topk"], dim=1).indices.to(torch.int32)
    w = torch.rand(m, shape["topk"], generator=gen) + 0.1
    w = (w / w.sum(1, keepdim=True) * weight_scale).float()
    return x, w.to(device), ids.to(device)


def marlin_section(report: Report, ops: MarlinOps, device, only: str | None, small: bool) -> None:
    import torch

    from ..checking import rel_frobenius, require, require_close
    from ..quant import native_selfchecks as NC
    from ..quant import selfchecks as Q
    from ..quant.int4_reference import reference_moe as int4_reference_moe
    from ..quant.int8_reference import reference_linear
    from ..quant.moe_reference import reference_moe
    from ..quant.native_linear import reference_fp8_linear

    dense_shapes = [("small", 256, 512)] if small else Q.DENSE_SHAPES
    dense_tokens = (1, 7) if small else Q.DENSE_TOKENS
    moe_shape = dict(experts=4, hidden=256, inter=128, topk=2) if small else dict(Q.MOE_SHAPE)
    native_moe_shape = dict(experts=4, hidden=256, inter=128, topk=2) if small else dict(NC.MOE_SHAPE)
    moe_tokens = (1, 5) if small else Q.MOE_TOKENS

    def dense(fmt):
        gen = torch.Generator().manual_seed(0)
        worst = 0.0
        for name, n, k in dense_shapes:
            original, marlin, wtype = ops.dense_layer(fmt, n, k, gen, device)
            for m in dense_tokens:
                x = torch.randn(m, k, generator=gen).to(device=device, dtype=torch.bfloat16)
                got = ops.dense_apply(x, marlin, n, k, wtype)
                if fmt == "fp8":
                    ref = reference_fp8_linear(x, *original)
                else:
                    ref = reference_linear(x, original[0].to(device), original[1].to(device), fmt)
                require(tuple(got.shape) == tuple(ref.shape) and got.dtype == torch.bfloat16,
                        f"{name} M={m}: {tuple(got.shape)} {got.dtype}")
                err = rel_frobenius(got, ref)
                require_close(f"{name} [{n}x{k}] M={m}", "relative error", err, Q.TOL)
                worst = max(worst, err)
        return f"{len(dense_shapes)} shapes x M{list(dense_tokens)}, worst rel err {worst:.1e}"

    def moe(fmt, label, shape):
        gen = torch.Generator().manual_seed(0)
        layer = ops.moe_layer(fmt, shape, gen, device)
        w13, s13, w2, s2 = layer.original
        if fmt == "int4":
            weight_scale = 1.0

            def reference(x, w, ids):
                return int4_reference_moe(x, w13, s13, w2, s2, w, ids, Q.SWIGLU_LIMIT, Q.ROUTED_SCALING)
        else:                                       # native: the routed scaling is in the top-k weights
            weight_scale = Q.ROUTED_SCALING
            experts = [(layer.dequantize(w13[e], s13[e]).to(device), layer.dequantize(w2[e], s2[e]).to(device))
                       for e in range(shape["experts"])]

            def reference(x, w, ids):
                return reference_moe(x, experts.__getitem__, shape["hidden"], w, ids, Q.SWIGLU_LIMIT, None)
        worst = 0.0
        for m in moe_tokens:
            x, w, ids = _moe_input(m, shape, gen, device, weight_scale=weight_scale)
            got = ops.fused_moe(x, *layer.marlin, w, ids, layer.wtype, Q.SWIGLU_LIMIT, layer.routed_scaling)
            err = rel_frobenius(got, reference(x, w, ids))
            require_close(f"{label} MoE M={m}", "relative error", err, Q.TOL)
            worst = max(worst, err)
        return f"E={shape['experts']} H={shape['hidden']} I={shape['inter']} M{list(moe_tokens)}: " \
               f"worst rel err {worst:.1e}"

    def align():
        from .standins import AlignStandIn

        gen = torch.Generator().manual_seed(2)
        shape = dict(Q.MOE_SHAPE)
        for m in (1, 8, 100, 1000):
            _, _, ids = _moe_input(m, shape, gen, device)
            for block in (8, 16, 64):
                got = [t.cpu() for t in ops.moe_align(ids, block, shape["experts"])]
                cpu = ids.cpu()
                want = [torch.empty_like(got[0]), torch.empty_like(got[1]), torch.empty_like(got[2])]
                AlignStandIn().moe_align_block_size(cpu, shape["experts"] + 1, block, want[0], want[1], want[2],
                                                    None, True)
                case = f"M={m} block {block}"
                require(got[2].tolist() == want[2].tolist(), f"{case}: [padded, inactive] {got[2].tolist()}, "
                        f"the contract gives {want[2].tolist()}")
                nblk = int(want[2][0]) // block
                require(got[1][:nblk].tolist() == want[1][:nblk].tolist(), f"{case}: expert ids per block differ")
                for b in range(nblk):
                    g, w = got[0][b * block:(b + 1) * block], want[0][b * block:(b + 1) * block]
                    require(sorted(g.tolist()) == sorted(w.tolist()), f"{case}: block {b} holds other token ids")
        return "sorted ids, expert ids and [padded, inactive] as the contract, M 1..1000, block 8/16/64"

    checks = [
        ("MoE align (SGLang JIT moe_align_block_size, inactive-prefix count) vs its contract", align),
        ("dsv4_int W8A16 dense, block (Marlin uint8b128 g128)", lambda: dense("block")),
        ("dsv4_int W8A16 dense, channel (Marlin uint8b128 per-channel)", lambda: dense("channel")),
        ("dsv4_int W4A16 MoE (Marlin uint4b8 g32)", lambda: moe("int4", "W4A16", moe_shape)),
        ("native FP8 W8A16 dense (Marlin float8_e4m3fn g128)", lambda: dense("fp8")),
        ("native MXFP4 MoE (Marlin float4_e2m1f + E8M0 g32)", lambda: moe("mxfp4", "MXFP4", native_moe_shape)),
    ]
    for name, fn in checks:
        if only and only not in name:
            continue
        report.check("marlin", name, fn)


def marlin_timings(report: Report, ops: MarlinOps, device, bandwidth: float, iters: int) -> None:
    import torch
    import torch.nn.functional as F

    from ..quant import native_selfchecks as NC
    from ..quant import selfchecks as Q

    gen = torch.Generator().manual_seed(1)
    for name, n, k in (("wq_b", 32768, 1024), ("wo_b", 4096, 8192), ("shared.gate_up", 4096, 4096)):
        for strategy in ("block", "fp8"):
            def one(name=name, n=n, k=k, strategy=strategy):
                _, marlin, wtype = ops.dense_layer(strategy, n, k, gen, device)
                wb = torch.randn(n, k, device=device, dtype=torch.bfloat16)
                out = {}
                for m in (1, 512):
                    x = torch.randn(m, k, device=device, dtype=torch.bfloat16)
                    ms = time_cuda(lambda x=x: ops.dense_apply(x, marlin, n, k, wtype), iters)
                    ms_bf16 = time_cuda(lambda x=x: F.linear(x, wb), iters)
                    out[f"M{m}_marlin_ms"] = round(ms, 4)
                    out[f"M{m}_bf16_ms"] = round(ms_bf16, 4)
                    out[f"M{m}_speedup_vs_bf16"] = round(ms_bf16 / ms, 2)
                    if m == 1:
                        out["M1_weight_GBps"] = round(n * k / (ms * 1e-3) / 1e9, 1)
                out["copy_GBps"] = round(bandwidth, 1)
                return out
            report.timing("marlin-timing", f"{strategy} dense {name} [{n}x{k}]", one)

    for fmt, shape in (("int4", dict(Q.MOE_SHAPE)), ("mxfp4", dict(NC.MOE_SHAPE))):
        def moe(fmt=fmt, shape=shape):
            layer = ops.moe_layer(fmt, shape, gen, device)
            (w13, s13, w2, s2), deq = layer.original, layer.dequantize
            dense = [(deq(w13[e], s13[e]).to(device, torch.bfloat16), deq(w2[e], s2[e]).to(device, torch.bfloat16))
                     for e in range(shape["experts"])]
            out = {}
            for m in (1, 100):
                x, w, ids = _moe_input(m, shape, gen, device)
                ms = time_cuda(lambda x=x, w=w, ids=ids: ops.fused_moe(x, *layer.marlin, w, ids, layer.wtype,
                                                                       Q.SWIGLU_LIMIT, layer.routed_scaling), iters)

                def bf16_loop(x=x, ids=ids):
                    for e in torch.unique(ids).tolist():
                        tok = (ids == e).any(1)
                        F.linear(F.linear(x[tok], dense[e][0])[:, :shape["inter"]], dense[e][1])
                ms_bf16 = time_cuda(bf16_loop, max(3, iters // 4))
                out[f"M{m}_marlin_ms"] = round(ms, 4)
                out[f"M{m}_bf16_loop_ms"] = round(ms_bf16, 4)
                out[f"M{m}_speedup_vs_bf16"] = round(ms_bf16 / ms, 2)
            return out
        report.timing("marlin-timing", f"{fmt} MoE E{shape['experts']} H{shape['hidden']} I{shape['inter']} "
                      f"top{shape['topk']}", moe)


# ---------------------------------------------------------------------------------------------

def summary_markdown(data: dict) -> str:
    checks = data["checks"]
    ok = sum(c["ok"] for c in checks)
    env = data["env"]
    lines = ["# Device kit result", "",
             f"{env.get('device', 'no device')} (sm {env.get('capability')}, {env.get('sms')} SMs), torch "
             f"{env.get('torch')}, CUDA {env.get('torch_cuda')}, driver {env.get('driver_cuda_version')}, "
             f"tvm-ffi {env.get('tvm_ffi')}{'; DRY RUN (CPU, no kernel ran)' if env.get('dry_run') else ''}.", "",
             f"**{ok}/{len(checks)} checks passed**, {len(data['skipped'])} skipped (time budget), "
             f"{len(data['errors'])} section errors, {data.get('elapsed_s')} s.", "",
             *(["**The repository's TileLang kernel files differ from the kit's (a TileLang failure may be a stale "
                 "kit: rebuild it).**", ""]
               if (data.get("kit") or {}).get("kernel_sources_match") is False else []),
             "| section | check | result | s |", "|---|---|---|---|"]
    for c in checks:
        res = ("PASS: " + c.get("detail", "")) if c["ok"] else ("**FAIL**: " + c.get("error", ""))
        lines.append(f"| {c['section']} | {c['name']} | {res.replace('|', '/')[:300]} | {c['s']} |")
    if data["timings"]:
        lines += ["", "## Timings (same card; medians of CUDA-event timings)", ""]
        for t in data["timings"]:
            vals = ", ".join(f"{k} {v}" for k, v in t.items() if k not in ("section", "name", "traceback", "s"))
            lines.append(f"- {t['section']} / {t['name']}: {vals}")
    for s in data["skipped"]:
        lines.append(f"- skipped: {s['section']} / {s['name']} ({s['why']})")
    for e in data["errors"]:
        lines.append(f"- section error: {e['section']} / {e['what']}: {e['error']}")
    return "\n".join(lines) + "\n"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m sglang_ampere.device_kit.runner", description=__doc__.split("\n")[0])
    p.add_argument("--kit", type=Path, default=Path("device-kit"), help="the kit folder (default: device-kit)")
    p.add_argument("--out", type=Path, required=True, help="folder for kit_result.json and kit_summary.md")
    p.add_argument("--budget-s", type=float, default=DEFAULT_BUDGET_S, help="stop starting checks after this")
    p.add_argument("--min-left-s", type=float, default=MIN_LEFT_S, help="skip a check with less than this left")
    p.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated subset of {','.join(SECTIONS)}")
    p.add_argument("--only", default=None, help="run only checks whose name contains this")
    p.add_argument("--iters", type=int, default=20, help="timed iterations per measurement (median)")
    p.add_argument("--repo", type=Path, default=None, help="the repository root (default: the one this file is in)")
    p.add_argument("--dry-run", action="store_true", help="CPU: bind/marshal TileLang launches, Marlin stand-ins")
    p.add_argument("--small", action="store_true", help="Marlin checks on small shapes (the dry run's default)")
    p.add_argument("--plant-bug", choices=("scale", "expert", "topk"), default=None,
                   help="dry run only: make the Marlin stand-ins wrong (a negative control)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.repo is not None and str(args.repo.resolve()) not in sys.path:
        sys.path.insert(0, str(args.repo.resolve()))
    os.environ.setdefault(envvars.TARGET, "ampere")                 # plan_for(90) -> the sm_86 plan
    import torch

    if not hasattr(torch.Tensor, "__dlpack_c_exchange_api__"):
        # otherwise tvm-ffi compiles a torch addon on first import (minutes, and headers it may lack)
        os.environ.setdefault("TVM_FFI_DISABLE_TORCH_C_DLPACK", "1")
    from .manifest import load_kit

    report = Report(args.out, args.budget_s, args.min_left_s)
    sections = [s for s in args.sections.split(",") if s]
    dry = args.dry_run
    if args.plant_bug and not dry:
        raise SystemExit("--plant-bug is for the dry run only")
    if not dry and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run with --dry-run on a machine without a GPU")
    report.data["env"] = environment(dry)
    kit = args.kit.resolve()
    try:
        kit_data = load_kit(kit)
    except Exception as e:
        report.error("setup", f"load {kit}/kit.json", e)
        return 2
    report.data["kit"] = {k: kit_data.get(k) for k in ("built", "arch", "source_arch", "size_bytes")}
    report.data["kit"]["kernel_sources_match"] = _sources_match(kit_data)
    if report.data["kit"]["kernel_sources_match"] is False:
        print("WARNING: the repository's TileLang kernel files differ from those the kit was built from; "
              "if a TileLang check fails, rebuild the kit (sglang-ampere device-kit) first", flush=True)
    device = torch.device("cpu" if dry else "cuda")
    sms = 132 if dry else torch.cuda.get_device_properties(0).multi_processor_count
    bandwidth = float("nan")
    if not dry and ("tilelang-timing" in sections or "marlin-timing" in sections):
        try:
            bandwidth = copy_bandwidth(device)
            report.data["env"]["copy_GBps"] = round(bandwidth, 1)
        except Exception as e:
            report.error("setup", "copy bandwidth", e)

    if "tilelang" in sections:
        try:
            tilelang_section(report, kit, kit_data, dry, args.only, sms)
        except Exception as e:
            report.error("tilelang", "section", e)
    if "tilelang-timing" in sections and not dry:
        try:
            tilelang_timings(report, kit, kit_data, bandwidth, args.iters)
        except Exception as e:
            report.error("tilelang-timing", "section", e)
    if ("marlin" in sections or "marlin-timing" in sections) and kit_data.get("marlin"):
        stack = contextlib.ExitStack()
        if dry:
            from .standins import fake_device_properties

            stack.enter_context(mock.patch.object(torch.cuda, "get_device_properties",
                                        lambda device=None: fake_device_properties(sms)))
        with stack:
            try:
                ops = MarlinOps(kit, kit_data, dry, args.plant_bug)
                with _ffi_stream(dry):
                    if "marlin" in sections:
                        marlin_section(report, ops, device, args.only, small=args.small or dry)
                    if "marlin-timing" in sections and not dry:
                        marlin_timings(report, ops, device, bandwidth, args.iters)
            except Exception as e:
                report.error("marlin", "section", e)
    report.write()
    (report.out / "kit_summary.md").write_text(summary_markdown(report.data))
    failed = [c for c in report.data["checks"] if not c["ok"]]
    print(f"{len(report.data['checks']) - len(failed)}/{len(report.data['checks'])} checks passed; "
          f"results in {report.out}", flush=True)
    return 0 if not failed and not report.data["errors"] else 1


def _sources_match(kit_data: dict) -> bool | None:
    """Whether this repository's kernel sources are the ones the kit was built from (None: unknown)."""
    from .manifest import kernel_sources_digest

    want = kit_data.get("kernel_sources_sha256")
    if not want:
        return None
    try:
        return kernel_sources_digest(Path(__file__).resolve().parents[2]) == want
    except OSError:
        return None


@contextlib.contextmanager
def _ffi_stream(dry: bool):
    """Marlin's host code launches on tvm-ffi's environment stream: make it torch's current one."""
    if dry:
        yield
        return
    import tvm_ffi

    with tvm_ffi.use_torch_stream():
        yield


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
