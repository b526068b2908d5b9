"""Our TileLang tile programs executed on the CPU, against the torch references (marker ``tile_cpu``).

Every kernel family we ship - dense and paged sparse MLA (window only, + c4, + c128; the prefill
kernel and the split decode kernel) and the C4 indexer (prefill and split decode) - is built from
its unmodified ``build()``, lowered for TileLang's CPU target through the test-only shim in
``tests/helpers/tile_cpu/shim.py`` (TileLang 0.1.12, g++), launched with the kernel modules'
own argument builders and judged with the GPU checks' tolerances. Three planted bugs (a 1%
softmax-scale error, the window cache's page size off by one, the indexer's page stride off by
16 bytes) must fail that judgement.

It all runs in one subprocess with its own TileLang cache directory, so the shim never touches a
CUDA compile in this process or TileLang's shared cache. What this does not check (the CUDA
lowering: layouts, mma.sync, barriers, shared-memory limits) is kernel-report's and the GPU
checks' job; see the shim's docstring.

    pytest -m tile_cpu          # just these
"""

from __future__ import annotations

import json
import os
import subprocess
import time

import pytest
from helpers import PY, REPO
from helpers.convert import fresh_seed
from helpers.tile_cpu import runner_path, shim

pytestmark = pytest.mark.tile_cpu

CASES = ["dense_prefill", "dense_decode_s2", "paged_swa_prefill", "paged_swa_decode_s2", "paged_c4_prefill",
         "paged_c4_decode_s4", "paged_c128_prefill", "paged_c128_decode_s8", "indexer_prefill", "indexer_decode_s4"]
MUTANTS = {"mutant_sm_scale_1pct": "max rel err",
           "mutant_window_page_size_minus_1": "",
           "mutant_indexer_page_stride_plus_16": ""}

_SKIP = shim.unsupported_reason()


@pytest.fixture(scope="module")
def tile_run(tmp_path_factory):
    """One runner subprocess for the whole module (about 65 s of CPU time: 13 kernels, each lowered
    and compiled by g++ in 3-20 s, run in under 1.5 s)."""
    if _SKIP:
        pytest.skip(_SKIP)
    seed = fresh_seed()
    cache = tmp_path_factory.mktemp("tilelang-cache")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONOPTIMIZE"}     # the runner judges with assert
    env.update({"TILELANG_CACHE_DIR": str(cache), "TILELANG_TMP_DIR": str(cache / "tmp"),
                "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))})
    t0 = time.time()
    p = subprocess.run([PY, str(runner_path()), "--seed", str(seed)], capture_output=True, text=True,
                       timeout=900, env=env, cwd=str(REPO))
    line = next((ln for ln in p.stdout.splitlines() if ln.startswith("RESULT")), None)
    assert line is not None, f"runner printed no RESULT (exit {p.returncode}):\n{p.stdout[-2000:]}{p.stderr[-6000:]}"
    data = json.loads(line[len("RESULT"):])
    data["wall_s"], data["seed"], data["cache"] = time.time() - t0, seed, cache
    return data


def _explain(res: dict) -> str:
    return json.dumps({k: v for k, v in res.items() if k != "traceback"}) + "\n" + res.get("traceback", "")


@pytest.mark.slow
@pytest.mark.parametrize("name", CASES)
def test_kernel_matches_the_torch_reference_on_cpu(tile_run, name):
    res = tile_run["cases"][name]
    assert res["ok"], f"seed {res['seed']}: {_explain(res)}"
    assert res["errors"]["max_rel"] > 0, f"{name}: bit-exact against a float32 reference is not plausible"


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(MUTANTS))
def test_planted_bug_fails_the_check(tile_run, name):
    """Mutation controls: the judgement the kernels pass must reject a wrong kernel (a failed
    check, not a crash)."""
    res = tile_run["cases"][name]
    assert res["mutant"] and not res["ok"], f"the planted bug {name} passed: {_explain(res)}"
    assert "failure" in res and "error" not in res, _explain(res)
    assert MUTANTS[name] in res["failure"]


@pytest.mark.slow
def test_shim_is_undone_and_private_to_the_runner(tile_run):
    assert tile_run["restored"] == {"functions": True, "pipeline": True, "passes": True, "wrapper_types": True,
                                    "gemm": True, "scopes": True}
    assert sorted(tile_run["cases"]) == sorted(CASES + list(MUTANTS))
    # every CPU kernel the runner compiled went to its own cache directory
    kernels = list(tile_run["cache"].rglob("device_kernel.cu"))
    assert len(kernels) >= len(CASES), f"{len(kernels)} kernels in the runner's TileLang cache {tile_run['cache']}"
    # the shim is imported here for its skip check only: this process's TileLang is untouched
    import tilelang.language as T

    assert T.alloc_fragment.__module__ == "tilelang.language.allocate"
    assert T.reduce_max.__module__ == "tilelang.language.reduce_op"


def test_skips_with_a_reason_on_another_tilelang_or_without_gxx(monkeypatch):
    import shutil

    tilelang = pytest.importorskip("tilelang")
    monkeypatch.setattr(tilelang, "__version__", "0.1.13")
    assert "TileLang 0.1.12" in shim.unsupported_reason() and "0.1.13" in shim.unsupported_reason()
    monkeypatch.setattr(tilelang, "__version__", shim.TILELANG_VERSION)
    monkeypatch.setattr(shutil, "which", lambda name: None)
    assert "g++" in shim.unsupported_reason()
    with pytest.raises(RuntimeError, match="g\\+\\+"):
        with shim.cpu_tile_programs():
            pass
