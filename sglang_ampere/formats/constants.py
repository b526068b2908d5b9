"""Every format constant of the native and the dsv4_int checkpoints, in one table.

Everything else (codecs, converter, synth, quant methods, kernels) reads them from here.
"""

from __future__ import annotations

# --- MXFP4 (native routed experts) -------------------------------------------------------
#: Magnitudes of the E2M1 codes 0..7 (bit 3 of a code is the sign).
E2M1_MAGNITUDES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)
#: Largest E2M1 magnitude.
E2M1_MAX = 6.0
#: K elements sharing one E8M0 scale in the native MXFP4 experts.
MXFP4_GROUP = 32

# --- E8M0 (UE8M0 power-of-two scales) ----------------------------------------------------
E8M0_BIAS = 127
#: Byte 255 is NaN and must never appear in a checkpoint.
E8M0_NAN = 255

# --- FP8 e4m3fn (native dense weights) ---------------------------------------------------
E4M3_BIAS = 7
E4M3_MAX = 448.0
#: The two NaN encodings of e4m3fn (no infinities).
E4M3_NAN_BYTES = (0x7F, 0xFF)
#: Native FP8 block scales and dsv4_int INT8 block scales are 128x128.
BLOCK = 128

# --- dsv4_int targets ---------------------------------------------------------------------
#: INT4 experts: signed -8..7 stored as value + 8 (Marlin/GPTQ ``uint4b8``), group 32 along K.
INT4_BIAS = 8
INT4_MIN, INT4_MAX = -8, 7
INT4_GROUP = 32
#: Dense INT8: symmetric -127..127; channelwise variant stores value + 128 as uint8 (``uint8b128``).
INT8_MAX = 127
INT8_CHANNEL_BIAS = 128
#: Smallest absmax (float32's smallest normal) used by every scale rule: an all-zero group
#: still gets a finite, positive scale.
ABSMAX_FLOOR = 2.0**-126
