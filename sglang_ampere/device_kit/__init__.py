"""The device kit: every GPU kernel of the project, checked on a bare GPU machine
(built by ``sglang-ampere device-kit``, :mod:`sglang_ampere.commands.device_kit`).

A borrowed GPU machine may have only Python + torch (no SGLang, no TileLang, no network, a 64 MiB
upload). This package builds, here, a folder that such a machine runs with one command
(``docs/device-kit.md``):

* :mod:`.export`   -- TileLang kernels -> CUDA source, cubin (sm_86 source as sm_90 SASS) and a
  launch manifest read out of TileLang's own host code (needs TileLang);
* :mod:`.manifest` -- the manifest format and its check against the cubin's parameter records;
* :mod:`.marlin`   -- SGLang's Marlin modules restricted to our specialisations, built with SGLang's
  own JIT build code, and SGLang's Python wrappers vendored (needs SGLang);
* :mod:`.builder`  -- the folder: kernels, modules, the tvm-ffi wheel, ``kit.json``;
* :mod:`.runtime`  -- launching a cubin from its manifest through the CUDA driver (ctypes);
* :mod:`.shim`     -- what the vendored wrappers import from SGLang, served from the kit;
* :mod:`.standins` -- torch stand-ins for the Marlin modules (the runner's CPU dry run);
* :mod:`.runner`      -- the runner (``python -m sglang_ampere.device_kit.runner``): checks, timings, JSON.

The runtime, shim, stand-ins and runner import with only torch and numpy installed; importing
this package imports nothing.
"""
