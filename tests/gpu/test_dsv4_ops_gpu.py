"""SGLang's real DeepSeek-V4 kernels vs the torch stand-ins of kernels/dsv4_ops_torch on a real
GPU (skipped without CUDA sm_80+ or without SGLang): the checks of kernels/dsv4_ops_selfchecks."""

from __future__ import annotations

from helpers.gpu import GPU_MARKS, checks_test

from sglang_ampere.kernels.dsv4_ops_selfchecks import gpu_checks

pytestmark = GPU_MARKS

test_stand_in_matches_sglang_kernel = checks_test(gpu_checks(), needs="sglang")
