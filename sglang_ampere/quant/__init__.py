"""The dsv4_int quantization config and its INT8 / INT4 methods (needs SGLang)."""
