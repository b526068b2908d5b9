"""The launcher: preset resolution, flag translation, topology checks, then exec of SGLang."""
