"""Per-GPU launch presets as data (``sm80.toml`` ...); read with importlib.resources."""
