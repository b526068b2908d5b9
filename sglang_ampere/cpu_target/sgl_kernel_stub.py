"""A stand-in ``sgl_kernel`` module for SGLang's CPU engine (the CPU target only).

With ``SGLANG_USE_CPU_ENGINE=1`` several SGLang 0.5.23 modules import CPU operators from the CPU
build of sgl-kernel at module level (``mem_cache/allocation.py:45-46``,
``kernels/ops/kvcache/cache_move.py:9-10``, the speculative ``spec_tree.py``/``eagle.py``/
``multi_layer_eagle.py``). The sgl-kernel SGLang installs is the CUDA build; without a driver it
fails to load (``ImportError: libcuda.so.1``), and the CPU build is not on PyPI. Those imports
happen before any plugin runs (a scheduler process imports ``scheduler.py`` and its memory
pools first), so :func:`install_finder` is called from the CPU target's ``sitecustomize``.

The stand-in implements the operators the DeepSeek-V4 CPU path calls: :func:`assign_req_to_token_pool_cpu`
and, for MTP speculative decoding, the ``*_cpu`` ops of :data:`SPEC_OPS` (torch, in
:mod:`sglang_ampere.kernels.spec_ops_torch`, each following the Triton kernel SGLang launches on a
GPU for the same call); every other name resolves to a function that raises, naming the operator,
if it is ever called.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
import types

NAME = "sgl_kernel"


def assign_req_to_token_pool_cpu(req_pool_indices, req_to_token, start_offset, end_offset, out_cache_loc,
                                 pool_len: int) -> None:
    """``req_to_token[req_pool_indices[i], start[i]:end[i]] = out_cache_loc[o_i : o_i + end[i] - start[i]]``
    with ``o_i = sum_{j<i} (end[j] - start[j])``, in place.

    The contract of SGLang's Triton kernel ``assign_req_to_token_pool`` (``mem_cache/allocation.py``
    ~695-722), which the CPU op replaces on the CPU engine (called at ~745 with ``pool_len`` =
    ``req_to_token.shape[1]``).
    """
    starts = start_offset.tolist()
    ends = end_offset.tolist()
    rows = req_pool_indices.tolist()
    offset = 0
    for row, s, e in zip(rows, starts, ends):
        n = e - s
        if n < 0 or e > pool_len:
            raise ValueError(f"assign_req_to_token_pool_cpu: bad range [{s}, {e}) for a pool row of {pool_len}")
        req_to_token[row, s:e] = out_cache_loc[offset:offset + n].to(req_to_token.dtype)
        offset += n


#: The speculative-decoding CPU ops (``kernels/ops/speculative/eagle.py`` ~10, ``cache_locs.py`` ~28,
#: ``spec_tree.py`` ~40-43).
SPEC_OPS = ("fill_bonus_tokens_cpu", "fill_accept_out_cache_loc_cpu", "assign_draft_cache_locs_contiguous_cpu",
            "assign_extend_cache_locs_cpu", "build_tree_kernel_efficient_cpu", "verify_tree_greedy_cpu")


def _missing(name: str):
    def op(*args, **kwargs):
        raise RuntimeError(
            f"sgl_kernel.{name} was called, but on sglang-ampere's CPU target sgl_kernel is a stand-in "
            "that implements only assign_req_to_token_pool_cpu and the MTP ops (the CUDA build of sgl-kernel "
            "cannot load without a GPU driver). This SGLang path is not supported on the CPU target.")
    op.__name__ = name
    op.sglang_ampere_missing = True
    return op


def make_module() -> types.ModuleType:
    mod = types.ModuleType(NAME)
    mod.__doc__ = __doc__
    mod.__path__ = []               # a package with no submodules: `import sgl_kernel.x` fails as before
    mod.sglang_ampere_stub = True
    mod.assign_req_to_token_pool_cpu = assign_req_to_token_pool_cpu
    from sglang_ampere.kernels import spec_ops_torch

    for name in SPEC_OPS:
        setattr(mod, name, getattr(spec_ops_torch, name))

    def __getattr__(name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        return _missing(name)

    mod.__getattr__ = __getattr__
    return mod


class _Finder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Answers ``import sgl_kernel`` with :func:`make_module`; leaves every other import alone."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != NAME:
            return None
        return importlib.machinery.ModuleSpec(NAME, self, is_package=True)

    def create_module(self, spec):
        return make_module()

    def exec_module(self, module):
        return None


def install_finder() -> None:
    """Put the finder first on ``sys.meta_path`` (idempotent); drops an already imported copy."""
    if not any(isinstance(f, _Finder) for f in sys.meta_path):
        sys.meta_path.insert(0, _Finder())
    if NAME in sys.modules and not getattr(sys.modules[NAME], "sglang_ampere_stub", False):
        del sys.modules[NAME]


def installed() -> bool:
    return any(isinstance(f, _Finder) for f in sys.meta_path)
