"""dsv4_int, and the native FP8/MXFP4 checkpoint below sm_90, inside SGLang 0.5.23.

* :mod:`.config`        -- ``Dsv4IntConfig``: per-layer decisions from the checkpoint's real dtypes.
* :mod:`.int8_linear`   -- INT8 W8A16 dense method (Marlin uint8b128 on sm_80+, torch reference elsewhere).
* :mod:`.int4_moe`      -- INT4 W4A16 routed-expert method (Marlin uint4b8 g32, opt-in Triton WNA16, torch reference).
* :mod:`.int8_reference` / :mod:`.int4_reference` -- the torch references of those two methods (no SGLang
  import: the device kit's runner imports them on a machine without SGLang).
* :mod:`.moe_reference` -- the routed-expert sum (SwiGLU clamp, top-k) both MoE references share.
* :mod:`.native_linear` -- torch reference of FP8 128x128 block-scaled W8A16 (SGLang's FP8 Marlin).
* :mod:`.native_moe`    -- torch reference of the MXFP4 (E2M1 x E8M0, group 32) routed experts.
* :mod:`.native_marlin_moe` -- SGLang's ``Mxfp4MarlinMoEMethod`` without its SM90/SM120 gate (``patches/dsv4_native``).
* :mod:`.native_selfchecks` -- ``selftest`` checks of FP8 Marlin and MXFP4 Marlin MoE on DeepSeek-V4 shapes.
* :mod:`.marlin_layout` -- dsv4_int tensors -> the exact inputs of SGLang's Marlin repack (no SGLang).
* :mod:`.marlin_sass`   -- builds just our Marlin specialisations for an Ampere arch and reads their SASS.
* :mod:`.selfchecks`    -- ``sglang-ampere selftest`` checks: Marlin vs the torch reference on DeepSeek-V4 shapes.

Importing this package imports nothing; SGLang is imported by the modules that need it.
"""
