"""Sparse MLA for GPUs without FlashMLA: a torch fallback and TileLang kernels."""
