"""TileLang sparse-MLA kernels vs the torch fallback on a real GPU (skipped without CUDA sm_80+)."""

from __future__ import annotations

from helpers.gpu import GPU_MARKS, checks_test

from sglang_ampere.kernels.selfchecks import gpu_checks

pytestmark = GPU_MARKS

test_tilelang_matches_torch = checks_test(gpu_checks(), needs="tilelang")
