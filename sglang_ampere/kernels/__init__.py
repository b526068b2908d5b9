"""Attention kernels for GPUs without FlashMLA/DeepGEMM: sparse MLA and the C4 indexer.

* :mod:`.sparse_mla` - the contract (module docstring has the math), the torch path in dense
  and paged (FlashMLA-keyword) form, and the TileLang entry points;
* :mod:`.kv_layout` - SGLang 0.5.23's paged FP8 DeepSeek-V4 KV cache: constants, an encoder;
* :mod:`.tilelang_mla` - the TileLang kernels (sm_86/sm_80), tile plan, launch wrappers;
* :mod:`.indexer` - the C4 indexer logits: contract, the bounded torch path, the TileLang entry;
* :mod:`.tilelang_indexer` - the indexer's TileLang kernel (sm_86/sm_80), tile plan, wrapper;
* :mod:`.tilelang_build` - what both TileLang kernel families share (target, pass configs, plans);
* :mod:`.selfchecks` - TileLang-vs-torch checks on real shapes for ``sglang-ampere selftest``.

Importing this package imports neither SGLang nor TileLang.
"""
