"""Sparse MLA for GPUs without FlashMLA: a torch fallback and TileLang kernels.

* :mod:`.sparse_mla` - the contract (module docstring has the math), the torch path in dense
  and paged (FlashMLA-keyword) form, and the TileLang entry points;
* :mod:`.kv_layout` - SGLang 0.5.23's paged FP8 DeepSeek-V4 KV cache: constants, an encoder;
* :mod:`.tilelang_mla` - the TileLang kernels (sm_86/sm_80), tile plan, launch wrappers;
* :mod:`.gpu_checks` - TileLang-vs-torch checks on real shapes for ``sglang-ampere selftest``.

Importing this package imports neither SGLang nor TileLang.
"""
