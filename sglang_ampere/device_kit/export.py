"""TileLang kernel -> CUDA source, launch manifest and cubin for the device kit (needs TileLang + nvcc).

Each kernel is lowered the way ``kernel-report`` lowers it: ``M.build(spec)`` for the sm_86 tile
plan, the module's ``PASS_CONFIGS``, target ``sm_{source_arch}``. That source (the instruction
stream a 3090 runs) is compiled with TileLang's JIT flags to a cubin for the card's arch with
``-gencode arch=compute_{source},code=sm_{arch}``, so the driver loads machine code and JITs no PTX.

The manifest (:class:`.manifest.KernelManifest`) is read out of TileLang's own host code, not
re-derived: the host function's ``tvm_call_packed("<kernel>", ...)`` lists the device function's
arguments followed by the launch extents; each argument is resolved through the host's ``Bind``
statements, by variable identity (never by name), to ``data(tensor i)`` or ``shape(tensor i)[d]``.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

from ..cuda_tools import find_cuda_home, find_tool
from .manifest import KernelManifest, Param, TensorSpec, check_against_cubin, read_kparam_info

#: kernel_launch_params names -> (grid/block, axis)
_LAUNCH_AXES = {"blockIdx.x": ("grid", 0), "blockIdx.y": ("grid", 1), "blockIdx.z": ("grid", 2),
                "threadIdx.x": ("block", 0), "threadIdx.y": ("block", 1), "threadIdx.z": ("block", 2)}
_DYN_SMEM = "tirx.use_dyn_shared_memory"
#: TVM's DLTensor field ids in tvm_struct_get (kArrData, kArrShape).
_ARR_DATA, _ARR_SHAPE = 1, 2


class ExportError(RuntimeError):
    """TileLang's lowering has a form this exporter does not understand (it refuses to guess)."""


@dataclass
class Lowered:
    source: str
    manifest: KernelManifest


def kernel_modules():
    from ..kernels import tilelang_indexer, tilelang_mla

    return {"tilelang_mla": tilelang_mla, "tilelang_indexer": tilelang_indexer}


def kit_specs(source_arch: int = 86, heads: int = 64) -> list:
    """Every TileLang kernel the kit carries: the paged sparse-MLA kernels a server launches
    (each split count x window / +c4 / +c128), the dense-form kernel for each split count (the
    self-checks call it), and the indexer for each split count; all with the sm_{source_arch} plan."""
    from ..kernels import tilelang_indexer as TI
    from ..kernels import tilelang_mla as M

    plan = M.plan_for(source_arch)
    dense = [M.KernelSpec(paged=False, heads=heads, num_splits=ns, plan=plan) for ns in M.SPLITS]
    return dense + M.serving_specs(source_arch, heads) + TI.serving_specs(source_arch, heads)


def _module_name(spec) -> str:
    return type(spec).__module__.rsplit(".", 1)[-1]


def _tensor_specs(prim_func) -> tuple[list[TensorSpec], list[str]]:
    """The prim_func's tensors (in order) with symbolic dimensions named per variable identity."""
    from tilelang import tvm

    seen: list[tuple[object, str]] = []
    taken: set[str] = set()
    tensors, handles = [], []

    def sym(v) -> str:
        for var, name in seen:
            if var.same_as(v):
                return name
        name, i = str(v.name), 1
        while name in taken:
            name, i = f"{v.name}#{i}", i + 1
        taken.add(name)
        seen.append((v, name))
        return name

    for p in prim_func.params:
        buf = prim_func.buffer_map[p]
        shape = []
        for d in buf.shape:
            if isinstance(d, tvm.tirx.IntImm):
                shape.append(int(d))
            elif isinstance(d, tvm.tirx.Var):
                shape.append(sym(d))
            else:
                raise ExportError(f"{buf.name}: dimension {d} is neither a constant nor a variable")
        tensors.append(TensorSpec(str(buf.name), str(buf.dtype), tuple(shape)))
        handles.append(str(p.name))
    return tensors, handles


class _HostResolver:
    """Resolve host-code expressions to tensor data pointers and shape entries."""

    def __init__(self, host_func, handles: list[str]):
        from tilelang import tvm

        self.tir = tvm.tirx
        self.handles = handles
        self.binds: list[tuple[object, object]] = []
        self.calls: list[object] = []
        binders = tuple(getattr(self.tir, n) for n in ("Bind", "LetStmt", "Let") if hasattr(self.tir, n))

        def visit(n):
            if isinstance(n, binders):
                self.binds.append((n.var, n.value))
            elif isinstance(n, self.tir.Call) and getattr(n.op, "name", "") == "tirx.tvm_call_packed":
                self.calls.append(n)
        self.tir.stmt_functor.post_order_visit(host_func.body, visit)

    def _bound(self, var):
        hits = [val for v, val in self.binds if v.same_as(var)]
        if len(hits) != 1:
            raise ExportError(f"host variable {var} is bound {len(hits)} times")
        return hits[0]

    def _tensor_of_handle(self, var) -> int:
        name = str(var.name)
        if self.handles.count(name) != 1:
            raise ExportError(f"host handle {name} is not one of the prim_func's parameters {self.handles}")
        return self.handles.index(name)

    def _struct_get(self, e):
        t = self.tir
        if isinstance(e, t.Call) and getattr(e.op, "name", "") == "tirx.if_then_else":
            e = e.args[1]                      # nullable tensor: the not-null branch
        if isinstance(e, t.Call) and getattr(e.op, "name", "") == "tirx.tvm_struct_get":
            return self._tensor_of_handle(e.args[0]), int(e.args[2])
        raise ExportError(f"expected tvm_struct_get(<tensor handle>, 0, field), got {e}")

    def resolve(self, e):
        """An int, ("data", i) or ("shape", i, d)."""
        t = self.tir
        if isinstance(e, t.IntImm):
            return int(e)
        if isinstance(e, t.Var):
            v = self._bound(e)
            if isinstance(v, t.Call) and getattr(v.op, "name", "") in ("tirx.tvm_struct_get", "tirx.if_then_else"):
                i, fld = self._struct_get(v)
                if fld != _ARR_DATA:
                    raise ExportError(f"{e} is field {fld} of tensor {i}, not its data pointer")
                return ("data", i)
            return self.resolve(v)
        if isinstance(e, t.Cast):
            return self.resolve(e.value)
        if isinstance(e, t.BufferLoad) and len(e.indices) == 1 and isinstance(e.indices[0], t.IntImm):
            i, fld = self._struct_get(self._bound(e.buffer.data))
            if fld != _ARR_SHAPE:
                raise ExportError(f"{e} reads field {fld} of tensor {i}, not its shape")
            return ("shape", i, int(e.indices[0]))
        raise ExportError(f"cannot resolve host expression {e} ({type(e).__name__})")

    def packed_call(self, entry: str):
        hits = [c for c in self.calls if isinstance(c.args[0], self.tir.StringImm) and c.args[0].value == entry]
        if len(hits) != 1:
            raise ExportError(f"expected one tvm_call_packed of {entry!r} in the host code, found {len(hits)}")
        return list(hits[0].args[1:])


def lower(spec, source_arch: int = 86, arch: int = 90, cubin: str = "") -> Lowered:
    """CUDA source and launch manifest of one kernel (TileLang's lowering for ``sm_{source_arch}``)."""
    import tilelang
    from tilelang import tvm

    from ..kernels.tilelang_build import target_for

    mods = kernel_modules()
    module = _module_name(spec)
    M = mods[module]
    prim = M.build(spec)
    tensors, handles = _tensor_specs(prim)
    tgt = tvm.target.Target(target_for(source_arch))
    with tvm.transform.PassContext(opt_level=3, config=M.PASS_CONFIGS), tgt:
        art = tilelang.lower(prim, target=tgt)
    devices = list(art.device_mod.functions.items())
    if len(devices) != 1:
        raise ExportError(f"{spec.name}: expected one device function, got {[str(g) for g, _ in devices]}")
    gv, dev = devices[0]
    entry = str(dev.attrs["global_symbol"]) if "global_symbol" in dev.attrs else gv.name_hint
    hosts = list(art.host_mod.functions.values())
    if len(hosts) != 1:
        raise ExportError(f"{spec.name}: expected one host function, got {len(hosts)}")
    res = _HostResolver(hosts[0], handles)
    call_args = res.packed_call(entry)
    nparam = len(dev.params)
    launch_names = [str(x) for x in dev.attrs["tirx.kernel_launch_params"]]
    if len(call_args) != nparam + len(launch_names):
        raise ExportError(f"{spec.name}: the host passes {len(call_args)} arguments, the device function takes "
                          f"{nparam} + {len(launch_names)} launch values")

    def symbol(r, what):
        """A constant, or the symbol (or static size) of the tensor dimension ``r`` names."""
        if isinstance(r, int):
            return r
        if r[0] != "shape":
            raise ExportError(f"{spec.name}: {what} is {r}, not a tensor dimension")
        return tensors[r[1]].shape[r[2]]

    params = []
    for p, a in zip(dev.params, call_args[:nparam]):
        r = res.resolve(a)
        if str(p.dtype) == "handle":
            if not (isinstance(r, tuple) and r[0] == "data"):
                raise ExportError(f"{spec.name}: pointer parameter {p.name} is {r}, not a tensor's data")
            params.append(Param("ptr", tensor=r[1], name=str(p.name)))
        elif str(p.dtype) == "int32":
            params.append(Param("int32", expr=symbol(r, f"parameter {p.name}"), name=str(p.name)))
        else:
            raise ExportError(f"{spec.name}: parameter {p.name} has type {p.dtype}")
    grid, block, dyn = [1, 1, 1], [1, 1, 1], 0
    for name, a in zip(launch_names, call_args[nparam:]):
        r = res.resolve(a)
        if name == _DYN_SMEM:
            if not isinstance(r, int):
                raise ExportError(f"{spec.name}: dynamic shared memory {r} is not a constant")
            dyn = r
            continue
        if name not in _LAUNCH_AXES:
            raise ExportError(f"{spec.name}: unknown launch parameter {name}")
        which, axis = _LAUNCH_AXES[name]
        value = symbol(r, name)
        if which == "block":
            if not isinstance(value, int):
                raise ExportError(f"{spec.name}: block extent {name} = {value} is not a constant")
            block[axis] = value
        else:
            grid[axis] = value
    attrs_dyn = int(dev.attrs["dyn_shared_memory_buf"]) if "dyn_shared_memory_buf" in dev.attrs else 0
    if attrs_dyn != dyn:
        raise ExportError(f"{spec.name}: the host launches with {dyn} B dynamic shared memory, the kernel "
                          f"declares {attrs_dyn} B")
    symbols = {}
    for t in tensors:
        for d, s in enumerate(t.shape):
            if isinstance(s, str):
                symbols.setdefault(s, f"{t.name}.shape[{d}]")
    manifest = KernelManifest(
        key=repr(spec), module=module, name=spec.name, entry=entry, cubin=cubin, arch=arch,
        source_arch=source_arch, grid=tuple(grid), block=tuple(block), dynamic_shared=dyn,
        tensors=tuple(tensors), params=tuple(params), symbols=symbols)
    return Lowered(art.kernel_source, manifest)


def nvcc_command(src: Path, out: Path, source_arch: int, arch: int, lineinfo: bool = False) -> list[str]:
    """TileLang's JIT flags, compiled for ``sm_{arch}`` from ``compute_{source_arch}``."""
    from tilelang.env import CUTLASS_INCLUDE_DIR, TILELANG_TEMPLATE_PATH

    home = find_cuda_home()
    nvcc = str(Path(home) / "bin" / "nvcc") if home and (Path(home) / "bin" / "nvcc").exists() else find_tool("nvcc")
    cmd = [nvcc, "--cubin", "-O3", "-std=c++20", f"-gencode=arch=compute_{source_arch},code=sm_{arch}",
           f"-I{TILELANG_TEMPLATE_PATH}", f"-I{CUTLASS_INCLUDE_DIR}", "-w", "-o", str(out), str(src)]
    if lineinfo:
        cmd.insert(3, "-lineinfo")
    return cmd


def export_kernel(spec, out_dir: Path, kit_root: Path, source_arch: int = 86, arch: int = 90,
                  lineinfo: bool = False, keep_source: bool = False) -> KernelManifest:
    """Lower, compile and check one kernel; returns its manifest (cubin path relative to ``kit_root``)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    cubin = out_dir / f"{spec.name}.sm_{arch}.cubin"
    low = lower(spec, source_arch, arch, str(cubin.relative_to(kit_root)))
    src = out_dir / f"{spec.name}.sm_{source_arch}.cu"
    src.write_text(low.source)
    cmd = nvcc_command(src, cubin, source_arch, arch, lineinfo)
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError(f"nvcc failed for {spec.name} ({' '.join(cmd)}):\n{p.stderr[-4000:]}")
    if not keep_source:
        src.unlink()
    check_against_cubin(low.manifest, read_kparam_info(cubin, find_tool("cuobjdump")))
    return low.manifest
