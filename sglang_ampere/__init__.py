"""sglang-ampere: serve DeepSeek-V4-Flash on NVIDIA Ampere with upstream SGLang 0.5.23.

Importing this package is cheap on purpose (no torch, no SGLang): the console script,
the launcher and the packaging tests import it in processes that must start fast.
"""

__version__ = "0.1.0"

#: The one SGLang release the patch layer is written and tested against.
SGLANG_PIN = "0.5.23"

#: ``quantization_config.quant_method`` of a requantized checkpoint.
QUANT_METHOD = "dsv4_int"

#: ``config.json`` ``architectures`` entry of DeepSeek-V4-Flash (SGLang's model class name).
MODEL_ARCHITECTURE = "DeepseekV4ForCausalLM"
