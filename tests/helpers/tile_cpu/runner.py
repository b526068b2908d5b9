"""Run every TileLang kernel family we ship on the CPU (through :mod:`.shim`) and judge it against
the torch references with the GPU checks' tolerances; print one ``RESULT<json>`` line.

Run it in a process of its own with its own ``TILELANG_CACHE_DIR`` (``tests/test_tile_cpu.py``
does): the shim patches TileLang for the whole process while a kernel is built, and TileLang's
disk cache key does not include the shim. Usage::

    TILELANG_CACHE_DIR=/tmp/tl python tests/helpers/tile_cpu/runner.py --seed 123 [--only NAME,...] [--jobs 2]

The cases are spread over ``--jobs`` child processes (default 2: CI has two cores and each
build is single-threaded); every child inherits the cache directory.

The cases are judged with plain ``assert`` (and ``checking.require_close`` for the tolerances).
This script runs under plain ``python``, not pytest, so its asserts are not rewritten: they hold
because the test starts it without ``-O`` and without ``PYTHONOPTIMIZE``, and ``main`` refuses to
run under either.

Each case builds its arguments with the kernel module's own argument builder
(``tilelang_mla.dense_launch``/``paged_launch``/``run``, ``tilelang_indexer.indexer_launch``, the
functions the CUDA wrappers call), on inputs from ``kernels.selfchecks`` (``device=cpu``) at small
odd sizes, compiles ``build(spec)`` for the CPU and judges the result like ``gpu_checks``:
worst-head max relative error <= ``TOL`` and lse <= ``LSE_TOL`` (sparse MLA), finite, exactly 0
past each row's length and worst-row error <= ``INDEXER_TOL`` (indexer). The mutation cases
compile a deliberately wrong spec (1% softmax scale, window page size off by one, indexer page
stride off by 16 bytes) and must fail the same judgement.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))         # tests/ (for helpers.*)

import torch  # noqa: E402

from helpers.tile_cpu import shim  # noqa: E402
from sglang_ampere.checking import CheckFailed, require_close, worst_slice_max_rel  # noqa: E402
from sglang_ampere.kernels import indexer as I  # noqa: E402
from sglang_ampere.kernels import selfchecks as G  # noqa: E402
from sglang_ampere.kernels import sparse_mla as S  # noqa: E402
from sglang_ampere.kernels import tilelang_indexer as TI  # noqa: E402
from sglang_ampere.kernels import tilelang_mla as M  # noqa: E402

CPU = torch.device("cpu")
#: Query tokens / context of the sparse-MLA cases: several 32-candidate blocks per list, pages
#: of every cache crossed, yet each kernel runs in well under a second.
DECODE_TOKENS, PREFILL_TOKENS, CTX = 3, 5, 1001


@dataclasses.dataclass
class Case:
    name: str
    family: str                  # "dense", "paged", "indexer"
    num_splits: int
    ratio: int = 0               # paged: 0 (window only), 4 or 128
    decode: bool = True
    mutate: str | None = None    # a planted bug (mutation control): the result must fail


CASES = [
    Case("dense_prefill", "dense", 1, decode=False),
    Case("dense_decode_s2", "dense", 2),
    Case("paged_swa_prefill", "paged", 1, 0, decode=False),
    Case("paged_swa_decode_s2", "paged", 2, 0),
    Case("paged_c4_prefill", "paged", 1, 4, decode=False),
    Case("paged_c4_decode_s4", "paged", 4, 4),
    Case("paged_c128_prefill", "paged", 1, 128, decode=False),
    Case("paged_c128_decode_s8", "paged", 8, 128),
    Case("indexer_prefill", "indexer", 1, decode=False),
    Case("indexer_decode_s4", "indexer", 4),
]
MUTATIONS = [
    Case("mutant_sm_scale_1pct", "paged", 2, 0, mutate="sm_scale"),
    Case("mutant_window_page_size_minus_1", "paged", 2, 0, mutate="page_size"),
    Case("mutant_indexer_page_stride_plus_16", "indexer", 4, mutate="page_stride"),
]


def _mutated(spec, how: str | None):
    if how is None:
        return spec
    if how == "sm_scale":
        return dataclasses.replace(spec, sm_scale=spec.sm_scale * 1.01)
    if how == "page_size":
        ps, st = spec.page1
        return dataclasses.replace(spec, page1=(ps - 1, st))
    if how == "page_stride":
        return dataclasses.replace(spec, page_stride=spec.page_stride + 16)
    raise ValueError(how)


def _compile(module, spec):
    t0 = time.time()
    with shim.cpu_tile_programs():
        kernel = shim.compile_cpu(module.build(spec), module.PASS_CONFIGS)
    return kernel, time.time() - t0


def _lse_error(got: torch.Tensor, want: torch.Tensor, case: str) -> float:
    """max |got - want| over finite entries; +inf (no valid candidate) must match exactly."""
    got, want = got.double(), want.double()
    inf_got, inf_want = torch.isposinf(got), torch.isposinf(want)
    assert bool((inf_got == inf_want).all()), (
        f"{case}: lse is +inf (nothing valid) for {int(inf_got.sum())} entries, expected {int(inf_want.sum())}")
    fin = ~inf_want
    return float((got[fin] - want[fin]).abs().max()) if bool(fin.any()) else 0.0


def run_dense(case: Case, seed: int) -> dict:
    tokens = PREFILL_TOKENS if not case.decode else DECODE_TOKENS
    q, kv, idx, sink, lens = G._dense_case(tokens, CTX, seed, CPU)
    idx[0, 1] = kv.shape[0] + 3                       # out of range: skipped
    idx[0, 2] = kv.shape[0]
    lens[-1] = 0                                      # a token with nothing to attend to
    launch = M.dense_launch(q, kv, idx, sink, G.SCALE, lens, plan=M.PLANS[86], num_splits=case.num_splits)
    kernel, compile_s = _compile(M, _mutated(launch.spec, case.mutate))
    t0 = time.time()
    out, _ = M.run(dataclasses.replace(launch, spec=_mutated(launch.spec, case.mutate)), kernel)
    run_s = time.time() - t0
    want = S.sparse_mla_torch(q.float(), kv.float(), idx, sink, G.SCALE, topk_length=lens)
    err = worst_slice_max_rel(out, want, dim=1)
    errors = {"max_rel": err}
    detail = require_close(case.name, "max rel err", err, G.TOL)
    return dict(errors=errors, detail=detail, compile_s=compile_s, run_s=run_s)


def run_paged(case: Case, seed: int) -> dict:
    tokens = PREFILL_TOKENS if not case.decode else DECODE_TOKENS
    kw = G.paged_case(tokens, CTX, case.ratio, seed, CPU, decode=case.decode)
    kw["topk_length"][1] = 0                          # token 1 attends to nothing: out 0, lse +inf
    if case.ratio:                                    # (prefill: the kernel's T.infinity store)
        kw["extra_topk_length"][1] = 0
    launch = M.paged_launch(kw["q"], kw["k_cache"], kw["indices"], kw["topk_length"], kw["attn_sink"],
                            kw["softmax_scale"], kw.get("extra_k_cache"), kw.get("extra_indices_in_kvcache"),
                            kw.get("extra_topk_length"), plan=M.PLANS[86], num_splits=case.num_splits)
    spec = _mutated(launch.spec, case.mutate)
    kernel, compile_s = _compile(M, spec)
    t0 = time.time()
    out, lse = M.run(dataclasses.replace(launch, spec=spec), kernel)
    run_s = time.time() - t0
    got, got_lse = out.unsqueeze(1), lse.unsqueeze(-1)
    want, want_lse = S.sparse_mla_paged_torch(**{**kw, "q": kw["q"].float()})
    assert got.shape == want.shape and got.dtype == torch.bfloat16, (
        f"{case.name}: output {tuple(got.shape)} {got.dtype}, expected {tuple(want.shape)} torch.bfloat16")
    err = worst_slice_max_rel(got, want, dim=2)
    errors = {"max_rel": err}
    lse_err = _lse_error(got_lse, want_lse, case.name)
    errors["lse"] = lse_err
    d1 = require_close(case.name, "max rel err", err, G.TOL)
    d2 = require_close(case.name, "lse max abs err", lse_err, G.LSE_TOL)
    return dict(errors=errors, detail=f"{d1}, {d2}", compile_s=compile_s, run_s=run_s)


def run_indexer(case: Case, seed: int) -> dict:
    rows = DECODE_TOKENS if case.decode else PREFILL_TOKENS
    args = G.indexer_case(rows, CTX, seed, CPU, decode=case.decode, width_pad=101 if case.decode else 37)
    q, pool, weight, lens, table, _, width, _ = args
    launch = TI.indexer_launch(q, pool, weight, lens, table, width, plan=TI.PLANS[86], num_splits=case.num_splits)
    kernel, compile_s = _compile(TI, _mutated(launch.spec, case.mutate))
    launch.out.fill_(float("nan"))                    # the kernel must write every column
    t0 = time.time()
    kernel(*launch.args)
    run_s = time.time() - t0
    got, want = launch.out, I.paged_mqa_logits_torch(*args)
    assert got.shape == want.shape and got.dtype == torch.float32, (
        f"{case.name}: logits {tuple(got.shape)} {got.dtype}, expected {tuple(want.shape)} torch.float32")
    assert bool(torch.isfinite(got).all()), f"{case.name}: non-finite logits"
    past = torch.arange(got.shape[1])[None, :] >= lens[:, None].long()
    stray = int((got[past] != 0).sum())
    assert stray == 0, f"{case.name}: {stray} nonzero logits past the rows' lengths (must be exactly 0)"
    err = worst_slice_max_rel(got, want, dim=0)
    detail = require_close(case.name, "worst-row max rel err", err, G.INDEXER_TOL)
    return dict(errors={"max_rel": err}, detail=detail, compile_s=compile_s, run_s=run_s)


RUNNERS = {"dense": run_dense, "paged": run_paged, "indexer": run_indexer}


def run_case(case: Case, seed: int) -> dict:
    """``{"ok", "detail" | "failure", ...}``: a failed check (this module's ``assert`` or the
    tolerance check ``require_close``) is a result, not a crash."""
    t0 = time.time()
    try:
        res = RUNNERS[case.family](case, seed)
        res["ok"] = True
    except (AssertionError, CheckFailed) as e:
        res = {"ok": False, "failure": str(e)}
    except Exception as e:  # report it; the test shows the traceback
        res = {"ok": False, "error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()[-4000:]}
    res["seed"], res["wall_s"] = seed, round(time.time() - t0, 2)
    return res


def shim_restored() -> dict:
    """After the blocks: TileLang's own functions, pipeline, passes, wrapper types and GEMM are
    back, and the same build() lowers with fragments and dynamic shared memory again."""
    import tilelang.language as T
    import tilelang.transform as TT
    from tilelang.backend.pass_pipeline.pipeline import get_pipeline
    from tilelang.cpu.pipeline import CPUPassPipelineBody
    from tilelang.jit.adapter.wrapper import TLCPUSourceWrapper
    from tilelang.tileop.gemm.registry import _GEMM_IMPLS

    script = TI.build(TI.report_specs(86)[0]).script()
    return {
        "functions": all(getattr(T, n).__module__.startswith("tilelang.") for n in
                         ("alloc_shared", "alloc_fragment", "reduce_max", "reduce_sum", "infinity")),
        "pipeline": get_pipeline("c")._lower is CPUPassPipelineBody,
        "passes": all(getattr(TT, n).__module__.startswith("tilelang.") for n in ("FlattenBuffer", "MakePackedAPI")),
        "wrapper_types": "bfloat16" not in TLCPUSourceWrapper._TYPE_MAP,
        "gemm": [e.impl_class.__name__ for e in _GEMM_IMPLS if e.name == "cpu.scalar"] == ["GemmScalar"],
        "scopes": "local.fragment" in script and "shared.dyn" in script,
    }


def _weight(case: Case) -> int:
    """Relative build cost (TileLang lowering + g++): the dual-cache kernels take the longest."""
    return 1 if case.family != "paged" else (2 if case.ratio == 0 else 4)


def _partition(cases: list[Case], jobs: int) -> list[list[Case]]:
    bins: list[list[Case]] = [[] for _ in range(jobs)]
    for case in sorted(cases, key=_weight, reverse=True):
        min(bins, key=lambda b: sum(map(_weight, b))).append(case)
    return [b for b in bins if b]


def _in_children(groups: list[list[Case]], seed: int) -> dict:
    """Run each group in a child process of this script (one core each) and merge the results."""
    import subprocess
    import tempfile

    with tempfile.TemporaryDirectory(prefix="tile-cpu-") as tmp:
        procs = []
        for i, group in enumerate(groups):
            out, err = Path(tmp, f"{i}.out"), Path(tmp, f"{i}.err")
            cmd = [sys.executable, __file__, "--seed", str(seed), "--jobs", "1",
                   "--only", ",".join(c.name for c in group)]
            with open(out, "w") as fo, open(err, "w") as fe:
                procs.append((subprocess.Popen(cmd, stdout=fo, stderr=fe), out, err))
        merged: dict = {"cases": {}, "restored": {}}
        for proc, out, err in procs:
            rc = proc.wait()
            sys.stderr.write(err.read_text()[-20000:])
            line = next((ln for ln in out.read_text().splitlines() if ln.startswith("RESULT")), None)
            if line is None:
                raise RuntimeError(f"a runner child exited with {rc} and printed no RESULT")
            part = json.loads(line[len("RESULT"):])
            merged["cases"].update(part["cases"])
            for k, v in part["restored"].items():
                merged["restored"][k] = merged["restored"].get(k, True) and v
    return merged


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--only", default="", help="comma-separated case names (default: all cases and mutations)")
    p.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1),
                   help="child processes to spread the cases over (default: 2, or 1 on one core)")
    a = p.parse_args(argv)
    if sys.flags.optimize:        # the judgement above is plain assert: under -O it would pass anything
        p.error("run without -O / PYTHONOPTIMIZE: the cases are judged with assert")
    reason = shim.unsupported_reason()
    if reason:
        print("RESULT" + json.dumps({"skip": reason}))
        return 0
    wanted = set(filter(None, a.only.split(",")))
    unknown = wanted - {c.name for c in CASES + MUTATIONS}
    if unknown:
        p.error(f"unknown case(s) {sorted(unknown)}")
    todo = [c for c in CASES + MUTATIONS if not wanted or c.name in wanted]
    if a.jobs > 1 and len(todo) > 1:
        print("RESULT" + json.dumps(_in_children(_partition(todo, a.jobs), a.seed)))
        return 0
    torch.set_num_threads(1)
    results = {}
    for i, case in enumerate(CASES + MUTATIONS):          # a case's seed does not depend on --only
        if case in todo:
            results[case.name] = dict(run_case(case, a.seed + i), mutant=case.mutate is not None)
            print(f"{case.name}: {results[case.name]}", file=sys.stderr, flush=True)
    print("RESULT" + json.dumps({"cases": results, "restored": shim_restored()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
