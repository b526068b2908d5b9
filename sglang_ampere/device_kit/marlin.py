"""SGLang's Marlin JIT modules for the device kit, built with SGLang's own build code (needs the serve install).

SGLang 0.5.23 JIT-compiles each Marlin op as a tvm-ffi module: ``load_jit`` turns the op file's
request into a ``BuildSpec``, ``ninja.generate`` writes the ``build.ninja`` (nvcc, then ``c++
-shared -ltvm_ffi -lcudart``) and ``ninja.build`` runs it. Here the op file's own private builder
(``_jit_gptq_marlin_module`` ...) is called with the arguments our methods use, its ``load_jit``
request is captured instead of served, and the same three steps run with two changes:

* the dispatch table of ``get_marlin_kernel`` is cut down to exactly the specialisations
  dsv4_int and the native path dispatch (:data:`sglang_ampere.quant.marlin_sass.KINDS`), in a copy
  of the ``.cuh`` that still includes its neighbours from SGLang's tree; a kernel outside the
  table is never selected (``determine_exec_config`` skips ``MarlinDefault`` and takes the next
  valid tile);
* ``-gencode=arch=compute_86,code=sm_86`` becomes ``code=sm_{arch}``: with ``-DSGL_CUDA_ARCH=860``
  it is the sm_86 source path (the sm_90-only branches stay off) as machine code for the card.

The repack and MoE-align modules are built unrestricted (a handful of kernels each). The
result needs only ``libtvm_ffi.so`` (the kit carries the tvm-ffi wheel) and ``libcudart.so.13``
(torch cu130 loads it). Facts: ``shared/reference/device-kit.md`` Q2.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import os
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..cuda_tools import find_cuda_home
from ..quant import marlin_sass


@dataclass(frozen=True)
class ModuleSpec:
    """One JIT module of the kit: the op file, its builder and arguments, the kinds it serves."""
    key: str                            # the kit's name for it
    op_module: str                      # SGLang op file (its wrapper is vendored into the kit)
    builder: str                        # the op file's private builder
    args: tuple                         # builder arguments (dtypes given by name, resolved at build)
    kinds: tuple[str, ...] = ()         # marlin_sass kinds of the restricted table; () = unrestricted
    zero_inactive: bool | None = None   # MoE: the GEMM2 (True) or GEMM1 (False) module's kernels

    def resolved_args(self) -> tuple:
        import torch

        return tuple(getattr(torch, a[len("torch."):]) if isinstance(a, str) and a.startswith("torch.") else a
                     for a in self.args)


#: The modules the kit builds. The MoE flags are ``fused_marlin_moe``'s without expert parallelism
#: (is_ep, has_bias, expert_ids_are_sorted, zero_inactive_output, has_inactive_prefix_count).
MODULES: tuple[ModuleSpec, ...] = (
    ModuleSpec("gptq_marlin", "sglang.kernels.ops.gemm.gptq_marlin", "_jit_gptq_marlin_module",
               ("torch.bfloat16",), ("dense", "dense_fp8")),
    ModuleSpec("moe_gemm1", "sglang.kernels.ops.moe.moe_wna16_marlin", "_jit_moe_wna16_marlin_module",
               ("torch.bfloat16", False, False, True, False, True), ("moe", "moe_mxfp4"), zero_inactive=False),
    ModuleSpec("moe_gemm2", "sglang.kernels.ops.moe.moe_wna16_marlin", "_jit_moe_wna16_marlin_module",
               ("torch.bfloat16", False, False, True, True, True), ("moe", "moe_mxfp4"), zero_inactive=True),
    ModuleSpec("repack", "sglang.kernels.ops.quantization.gptq_marlin_repack", "_jit_gptq_marlin_repack_module",
               ()),
    ModuleSpec("moe_align", "sglang.kernels.ops.moe.moe_align", "_jit_moe_align_module",
               ("torch.int32", True, False, False)),
)


class MarlinBuildError(RuntimeError):
    pass


@dataclass
class BuiltModule:
    key: str
    module_name: str
    file: str                 # relative to the kit folder
    kernels: int              # Marlin specialisations in the restricted table (0: unrestricted module)
    seconds: float
    bytes: int
    build_ninja: str = ""
    problems: list[str] = field(default_factory=list)


def table_lines(kinds: tuple[str, ...], zero_inactive: bool | None) -> list[str]:
    """``_GET_IF(...)`` lines of the restricted ``get_marlin_kernel`` table for ``kinds``.

    The macro's arguments: (W_TYPE, thread_m_blocks, thread_n_blocks, thread_k_blocks, m_block_size_8,
    group_blocks, num_threads, is_zp_float); the MoE header derives the scale type from W_TYPE and
    group_blocks, and the module's template flags (zero_inactive ...) are fixed per module.
    """
    lines = []
    for name in kinds:
        kind = marlin_sass.KINDS[name]
        for g in kind.group_blocks:
            for threads, m, n, k, m8 in marlin_sass._tiles(kind.m1, kind.m234):
                lines.append(f"  _GET_IF(host::{kind.w_type}, {m}, {n}, {k}, {'true' if m8 else 'false'}, {g}, "
                             f"{threads}, false)")
    return lines


def restrict_table(source: str, lines: list[str]) -> str:
    """``source`` with the body of ``get_marlin_kernel`` replaced by exactly ``lines``."""
    m = re.search(r"MarlinFuncPtr get_marlin_kernel\(", source)
    if not m:
        raise MarlinBuildError("no get_marlin_kernel definition in the header")
    start = source.find("auto kernel = MarlinDefault;", m.end())
    end = source.find("return kernel;", start)
    if start < 0 or end < 0:
        raise MarlinBuildError("get_marlin_kernel no longer has the 'auto kernel = MarlinDefault; ... return kernel;' "
                               "body this builder rewrites")
    head = source[:start] + "auto kernel = MarlinDefault;\n  if (false) {\n  }\n"
    body = "\n".join(lines) + "\n\n  "
    if source.find("MarlinFuncPtr get_marlin_kernel(", end) >= 0:
        raise MarlinBuildError("more than one get_marlin_kernel definition in the header")
    return head + body + source[end:]


@contextlib.contextmanager
def _captured_load_jit(op):
    """Replace the op module's ``load_jit`` with a recorder for the duration of the block."""
    calls = []

    def record(*args, **kwargs):
        calls.append((args, kwargs))
        return None

    saved = op.load_jit
    op.load_jit = record
    try:
        yield calls
    finally:
        op.load_jit = saved


def request_of(spec: ModuleSpec) -> tuple[tuple, dict]:
    """The ``load_jit(*args, **kwargs)`` request SGLang's own builder makes for ``spec``."""
    op = importlib.import_module(spec.op_module)
    builder = getattr(op, spec.builder)
    fn = getattr(builder, "__wrapped__", builder)          # past cache_once
    with _captured_load_jit(op) as calls:
        fn(*spec.resolved_args())
    if len(calls) != 1:
        raise MarlinBuildError(f"{spec.op_module}.{spec.builder} made {len(calls)} load_jit calls, expected 1")
    return calls[0]


def _ensure_cuda_home() -> None:
    # SGLang's link step takes -L$CUDA_HOME/lib64; without CUDA_HOME it uses the folder above the nvcc on
    # PATH, which is a wrapper script's folder on some machines (marlin-jit.md, obstacle 1).
    if not (os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")):
        home = find_cuda_home()
        if home is None:
            raise MarlinBuildError("no CUDA toolkit found; set CUDA_HOME to the folder with bin/nvcc and lib64/")
        os.environ["CUDA_HOME"] = home


def build_module(spec: ModuleSpec, out_dir: Path, kit_root: Path, arch: int = 90, source_arch: int = 86,
                 work_dir: Path | None = None) -> BuiltModule:
    """Build one module with SGLang's BuildSpec / ninja code into ``out_dir``."""
    _ensure_cuda_home()
    from sglang.kernels.jit.utils import override_jit_cuda_arch
    from sglang.kernels.jit.utils.arch import get_default_target_flags
    from sglang.kernels.jit.utils.compile import ninja
    from sglang.kernels.jit.utils.compile.paths import DEFAULT_CFLAGS, DEFAULT_INCLUDE, DEFAULT_LDFLAGS
    from sglang.kernels.jit.utils.compile.spec import BuildSpec, resolve_sources

    args, kw = request_of(spec)
    cuda_files = list(resolve_sources(kw.get("cuda_files")))
    includes = list(DEFAULT_INCLUDE) + list(kw.get("extra_include_paths") or [])
    if kw.get("extra_dependencies") or kw.get("cpp_files"):
        raise MarlinBuildError(f"{spec.key}: the request has dependencies or C++ files this builder does not handle")
    work = Path(work_dir or out_dir / f".build-{spec.key}")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    n_kernels = 0
    if spec.kinds:
        if len(cuda_files) != 1:
            raise MarlinBuildError(f"{spec.key}: expected one CUDA header, got {cuda_files}")
        header = Path(cuda_files[0])
        lines = table_lines(spec.kinds, spec.zero_inactive)
        n_kernels = len(lines)
        restricted = work / f"{header.stem}.kit{header.suffix}"
        restricted.write_text(restrict_table(header.read_text(), lines))
        cuda_files = [str(restricted)]
        includes.append(str(header.parent))      # its quoted includes ("kernel.h", ...) from SGLang's tree
    major, minor = divmod(source_arch, 10)
    with override_jit_cuda_arch(major, minor, ""):
        bspec = BuildSpec(
            module_args=tuple(str(a) for a in args),
            cpp_files=(),
            cuda_files=tuple(cuda_files),
            cpp_wrappers=(),
            cuda_wrappers=tuple(kw.get("cuda_wrappers") or ()),
            cflags=tuple(DEFAULT_CFLAGS + list(kw.get("extra_cflags") or [])),
            cuda_cflags=tuple(get_default_target_flags() + list(kw.get("extra_cuda_cflags") or [])),
            ldflags=tuple(DEFAULT_LDFLAGS + list(kw.get("extra_ldflags") or [])),
            include_paths=tuple(includes),
            header_only=True,
        )
        text = ninja.generate(bspec)
    old = f"code=sm_{source_arch}"
    if text.count(old) != 1 or f"-DSGL_CUDA_ARCH={source_arch * 10}" not in text:
        raise MarlinBuildError(f"{spec.key}: the generated build.ninja does not have exactly one {old} "
                               f"and -DSGL_CUDA_ARCH={source_arch * 10}:\n{text}")
    text = text.replace(old, f"code=sm_{arch}")
    t0 = time.time()
    library = ninja.build(spec=bspec, build_dir=work / "build", build_file=text)
    seconds = time.time() - t0
    out_dir.mkdir(parents=True, exist_ok=True)
    dest = out_dir / f"{bspec.module_name}.so"
    shutil.copyfile(library, dest)
    shutil.rmtree(work, ignore_errors=True)
    return BuiltModule(spec.key, bspec.module_name, str(dest.relative_to(kit_root)), n_kernels,
                       round(seconds, 1), dest.stat().st_size, build_ninja=text)


# ---------------------------------------------------------------------------------------------
# Vendoring SGLang's Python side (Apache-2.0) into the kit

#: SGLang op files whose Python wrappers the runner calls (copied verbatim, imports rewritten).
VENDORED_OPS = {
    "gptq_marlin": "sglang.kernels.ops.gemm.gptq_marlin",
    "moe_wna16_marlin": "sglang.kernels.ops.moe.moe_wna16_marlin",
    "gptq_marlin_repack": "sglang.kernels.ops.quantization.gptq_marlin_repack",
    "moe_align": "sglang.kernels.ops.moe.moe_align",
}
#: Pure-torch weight preparation functions, copied by source: module -> names.
VENDORED_FUNCTIONS = {
    "sglang.srt.layers.quantization.marlin_utils": (
        "get_scale_perms", "marlin_permute_scales", "marlin_permute_bias", "marlin_make_workspace"),
    "sglang.srt.layers.quantization.marlin_utils_fp8": (
        "prepare_fp8_layer_for_marlin", "pack_fp8_to_int32", "fp8_fused_exponent_bias_into_scales"),
    "sglang.srt.layers.quantization.marlin_utils_fp4": (
        "mxfp4_marlin_process_scales", "_normalize_scale_tensor", "_get_optional_param",
        "_repack_moe_fp4_weight_for_marlin", "_permute_moe_fp4_scales_for_marlin",
        "prepare_moe_mxfp4_layer_for_marlin"),
}
_IMPORT_REWRITES = (
    (re.compile(r"^from sglang\.kernels\.jit\.utils import ", re.M), "from sglang_ampere.device_kit.shim import "),
    (re.compile(r"^from sglang\.kernels\.kernel_api_logging import ", re.M),
     "from sglang_ampere.device_kit.shim import "),
)
_PREP_HEADER = '''"""SGLang 0.5.23's Marlin weight preparation, copied by source for the device kit (Apache-2.0).

Functions from {modules}. Only their imports are provided here; their bodies are SGLang's.
"""
from __future__ import annotations

import logging  # noqa: F401
from typing import Callable, Optional  # noqa: F401

import numpy  # noqa: F401
import torch

from sgl_ops.gptq_marlin_repack import gptq_marlin_repack
from sglang_ampere.device_kit.shim import warning_once_logger

logger = warning_once_logger("sglang.srt.layers.quantization")
'''


def _top_level_sglang_imports(text: str) -> list[str]:
    """Lines importing sglang / sgl_kernel outside an ``if TYPE_CHECKING:`` block."""
    bad, in_tc = [], False
    for line in text.splitlines():
        if re.match(r"^if TYPE_CHECKING:", line):
            in_tc = True
            continue
        if in_tc and line and not line[0].isspace():
            in_tc = False
        if not in_tc and re.match(r"^\s*(from|import)\s+(sglang|sgl_kernel)\b", line):
            bad.append(line.strip())
    return bad


def vendor_ops(dest: Path) -> dict:
    """Write ``dest`` (the kit's ``sgl_ops`` package): the op wrappers, ``scalar_type.py`` and ``marlin_prep.py``."""
    import inspect

    dest.mkdir(parents=True, exist_ok=True)
    (dest / "__init__.py").write_text('"""SGLang 0.5.23 Python code vendored into the device kit (Apache-2.0)."""\n')
    files = {}
    for name, modname in VENDORED_OPS.items():
        mod = importlib.import_module(modname)
        text = Path(mod.__file__).read_text()
        for pattern, repl in _IMPORT_REWRITES:
            text = pattern.sub(repl, text)
        bad = _top_level_sglang_imports(text)
        if bad:
            raise MarlinBuildError(f"{modname} still imports SGLang after the rewrite: {bad}")
        (dest / f"{name}.py").write_text(f"# Vendored from SGLang 0.5.23 {modname} (Apache-2.0); imports rewritten.\n"
                                         + text)
        files[name] = modname
    st = importlib.util.find_spec("sgl_kernel")
    if st is None or not st.submodule_search_locations:
        raise MarlinBuildError("sgl_kernel is not installed (the kit vendors its scalar_type.py)")
    src = Path(list(st.submodule_search_locations)[0]) / "scalar_type.py"
    text = src.read_text()
    if _top_level_sglang_imports(text):
        raise MarlinBuildError("sgl_kernel/scalar_type.py imports sgl_kernel; it can no longer be vendored alone")
    (dest / "scalar_type.py").write_text("# Vendored from sgl_kernel/scalar_type.py (Apache-2.0), unchanged.\n" + text)
    files["scalar_type"] = "sgl_kernel.scalar_type"
    parts = [_PREP_HEADER.format(modules=", ".join(VENDORED_FUNCTIONS))]
    for modname, names in VENDORED_FUNCTIONS.items():
        mod = importlib.import_module(modname)
        for n in names:
            parts.append(f"\n\n# --- {modname}.{n}\n" + inspect.getsource(getattr(mod, n)))
    (dest / "marlin_prep.py").write_text("".join(parts))
    files["marlin_prep"] = sorted(f"{m}.{n}" for m, ns in VENDORED_FUNCTIONS.items() for n in ns)
    return files


def scalar_type_ids() -> dict[str, int]:
    """``ScalarType.id`` of the weight types the runner passes (from the vendored-to-be file)."""
    spec = importlib.util.find_spec("sgl_kernel")
    path = Path(list(spec.submodule_search_locations)[0]) / "scalar_type.py"
    s = importlib.util.spec_from_file_location("_kit_scalar_type", path)
    m = importlib.util.module_from_spec(s)
    s.loader.exec_module(m)
    t = m.scalar_types
    return {n: int(getattr(t, n).id) for n in ("uint8b128", "uint4b8", "float8_e4m3fn", "float4_e2m1f")}
