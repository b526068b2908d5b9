"""dsv4_int inside SGLang 0.5.23.

* :mod:`.config`        -- ``Dsv4IntConfig``: per-layer decisions from the checkpoint's real dtypes.
* :mod:`.int8_linear`   -- INT8 W8A16 dense method (Marlin uint8b128 on sm_80+, torch reference elsewhere).
* :mod:`.int4_moe`      -- INT4 W4A16 routed-expert method (Marlin uint4b8 g32, opt-in Triton WNA16, torch reference).
* :mod:`.marlin_layout` -- dsv4_int tensors -> the exact inputs of SGLang's Marlin repack (no SGLang).
* :mod:`.marlin_sass`   -- builds just our Marlin specialisations for an Ampere arch and reads their SASS.
* :mod:`.gpu_checks`    -- ``sglang-ampere selftest`` checks: Marlin vs the torch reference on DeepSeek-V4 shapes.

Importing this package imports nothing; SGLang is imported by the modules that need it.
"""
