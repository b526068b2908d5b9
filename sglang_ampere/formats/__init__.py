"""Exact bit-level codecs of the native DeepSeek-V4-Flash and the dsv4_int formats.

Pure torch; never imports SGLang. Every constant lives in :mod:`.constants` (re-exported here).
"""

from . import constants as _constants
from .blocks import block_absmax, block_scale_shape, expand_block_scale
from .constants import *  # noqa: F403 - every format constant, listed once in constants.py
from .e8m0 import E8M0_DTYPE, e8m0_from_exponent, e8m0_to_float
from .errors import FormatError
from .fp8 import E4M3_DTYPE, e4m3_to_float, float_to_e4m3, fp8_block_dequantize, fp8_block_quantize, scale_to_float
from .int4 import int4_group_dequantize, pack_uint4b8, unpack_uint4b8
from .int8 import int8_block_dequantize, pack_uint8b128, uint8_channel_dequantize, unpack_uint8b128
from .mxfp4 import e2m1_decode, e2m1_encode, e2m1_table, mxfp4_dequantize, mxfp4_quantize
from .nibbles import pack_nibbles, unpack_nibbles

__all__ = [
    "E4M3_DTYPE", "E8M0_DTYPE", "FormatError",
    "block_absmax", "block_scale_shape", "expand_block_scale",
    "e2m1_decode", "e2m1_encode", "e2m1_table",
    "e4m3_to_float", "e8m0_from_exponent", "e8m0_to_float",
    "float_to_e4m3", "fp8_block_dequantize", "fp8_block_quantize", "scale_to_float",
    "int4_group_dequantize", "int8_block_dequantize", "uint8_channel_dequantize",
    "mxfp4_dequantize", "mxfp4_quantize",
    "pack_nibbles", "unpack_nibbles", "pack_uint4b8", "unpack_uint4b8", "pack_uint8b128", "unpack_uint8b128",
]
__all__ += [name for name in vars(_constants) if name.isupper()]
