"""Every TileLang kernel we ship has distinct parameter names once lowered for sm_86, and
TileLang's generated CUDA launcher passes it exactly its parameters.

TileLang names a dynamic size after the ``T.macro`` parameter it is passed through, and its NVRTC
and cython launch generators collect dynamic sizes *by name*: two sizes that share a name get one
launch argument, so the kernel receives too few (the paged sparse-MLA kernel once had ``bound``
and ``width`` twice each: 12 arguments for 14 parameters). The tvm_ffi backend the wrappers use
was not affected, but every backend must launch the same kernel correctly. No GPU is needed:
TileLang lowers to CUDA C++ here as ``kernel-report`` does.
"""

from __future__ import annotations

import pytest

from sglang_ampere.kernels import tilelang_build as B
from sglang_ampere.kernels import tilelang_indexer as TI
from sglang_ampere.kernels import tilelang_mla as M

pytest.importorskip("tilelang")


#: One kernel per family, prefill and split decode alternating (within a family they differ only
#: in the output shapes and the sink parameter).
FAMILIES = {
    "sparse_mla_dense_prefill_h64": M, "sparse_mla_paged_swa_decode_s8_h64": M,
    "sparse_mla_paged_c4_prefill_h64": M, "sparse_mla_paged_c128_decode_s8_h64": M,
    "indexer_logits_decode_s16_h64": TI,
}


def _one_per_family():
    specs = {s.name: s for s in [*M.report_specs(86), *TI.report_specs(86)]}
    return [specs[name] for name in FAMILIES]


def test_the_families_are_all_there():
    assert len(_one_per_family()) == 5
    built = {type(s).__module__ for s in [*M.report_specs(86), *TI.report_specs(86)]}
    assert built == {M.__name__, TI.__name__}


def test_dynamic_sizes_have_distinct_names_in_every_served_kernel():
    """Cheap (no lowering): every kernel a server launches, by the launchers' own collection rule."""
    specs = [*M.serving_specs(86), *M.report_specs(86), *TI.serving_specs(86)]
    seen = set()
    for spec in specs:
        if spec in seen:
            continue
        seen.add(spec)
        mod = M if type(spec).__module__ == M.__name__ else TI
        names = B.dynamic_size_names(mod.build(spec))
        B.check_unique_params(spec.name, names)
        assert len(names) == len(set(names)) >= 3, (spec.name, names)
    paged2 = M.build(M.serving_specs(86)[-1])
    assert B.dynamic_size_names(paged2) == ["num_tokens", "cache_bytes1", "width1", "cache_bytes2", "width2"]


@pytest.mark.parametrize("spec", _one_per_family(), ids=lambda s: s.name)
def test_generated_kernel_signature_has_no_duplicate_names(spec):
    """Lowered for sm_86: distinct parameter names, and TileLang's generated CUDA host launcher
    (what its cython and NVRTC backends compile) passes the kernel exactly its parameters."""
    mod = FAMILIES[spec.name]
    kernels = B.check_launch(mod.build(spec), 86, mod.PASS_CONFIGS)
    assert kernels, spec.name
    for name, params in kernels.items():
        assert len(params) == len(set(params)), (name, params)
    if mod is M and spec.paged:
        (params,) = kernels.values()
        assert "cache_bytes1" in params and "width1" in params
        assert ("cache_bytes2" in params) == (spec.page2 is not None)


def test_the_check_catches_a_duplicate():
    """Negative controls: a synthetic signature, and a real TileLang kernel that passes two
    dynamic sizes through one macro parameter (the old sparse-MLA naming)."""
    old = ["C1", "C2", "Idx1", "Idx2", "Len1", "Len2", "Lse", "Out", "Q", "bound", "bound", "num_tokens",
           "width", "width"]
    with pytest.raises(ValueError, match=r"\['bound', 'width'\]"):
        B.check_unique_params("sparse_mla_paged2_kernel", old)
    B.check_unique_params("ok", [n + str(i) for i, n in enumerate(old)])
    assert B.duplicates(["a", "b", "a", "c", "b"]) == ["a", "b"] and B.duplicates(["a"]) == []

    import tilelang.language as T

    n1, n2 = T.dynamic("n1"), T.dynamic("n2")

    @T.macro
    def fill(X, width):
        for i in T.Parallel(32):
            X[T.min(i, width - 1)] = T.float32(1)

    @T.prim_func
    def two_sizes(A: T.Tensor((n1,), "float32"), Bf: T.Tensor((n2,), "float32")):
        with T.Kernel(1, threads=32):
            fill(A, n1)
            fill(Bf, n2)

    names = B.dynamic_size_names(two_sizes)
    assert names == ["width", "width"], names          # TileLang renamed both sizes
    with pytest.raises(ValueError, match="width"):
        B.check_unique_params("two_sizes", names)
    (params,) = B.kernel_params(two_sizes, 86, M.PASS_CONFIGS).values()
    assert params == ["A", "Bf", "width", "width"]
    with pytest.raises(ValueError, match="width"):
        B.check_unique_params("two_sizes_kernel", params)
    # and TileLang's own CUDA launcher generator cannot launch it (one argument short)
    with pytest.raises(ValueError, match="4 parameters, but 3 arguments"):
        B.launch_args(two_sizes, 86, M.PASS_CONFIGS)
    with pytest.raises(ValueError, match="width"):
        B.check_launch(two_sizes, 86, M.PASS_CONFIGS)


def test_a_launch_that_differs_from_the_parameters_is_caught(monkeypatch):
    """Negative control of check_launch's comparison: a launcher passing the arguments out of order."""
    import tilelang.language as T

    n = T.dynamic("n")

    @T.prim_func
    def one_size(A: T.Tensor((n,), "float32"), Bf: T.Tensor((n,), "float32")):
        with T.Kernel(1, threads=32):
            for i in T.Parallel(32):
                Bf[T.min(i, n - 1)] = A[T.min(i, n - 1)]

    params = B.check_launch(one_size, 86, M.PASS_CONFIGS)
    assert params == {"one_size_kernel": ["A", "Bf", "n"]}
    monkeypatch.setattr(B, "launch_args", lambda *a, **k: {"one_size_kernel": ["Bf", "A", "n"]})
    with pytest.raises(ValueError, match="launcher passes"):
        B.check_launch(one_size, 86, M.PASS_CONFIGS)
