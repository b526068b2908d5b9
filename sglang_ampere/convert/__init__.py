"""The requantizer: native FP4/FP8 DeepSeek-V4-Flash -> dsv4_int. Never imports SGLang."""
