"""A plain-torch forward of DeepSeek-V4-Flash, to run and measure a checkpoint end to end.

* :mod:`.weights` - one access layer for native (FP8 / MXFP4) and dsv4_int (INT8 / INT4)
  checkpoints, dequantizing per tensor with :mod:`sglang_ampere.formats`;
* :mod:`.ops` - the numeric building blocks, each formula in its docstring;
* :mod:`.model` - the forward (prefill, incremental decode, MTP), layer streaming;
* :mod:`.eval` - ``sglang-ampere eval``: perplexity, KL / top-1 against a reference, per-layer SNR.

Never imports SGLang.
"""
