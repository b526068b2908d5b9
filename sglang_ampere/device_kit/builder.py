"""Build the device kit folder (needs the ``serve`` install: SGLang, TileLang, tvm-ffi, and nvcc).

Layout of ``--out DIR``::

    kit.json                       what is in the kit: launch manifests, Marlin modules, versions, sizes
    README.md                      the one command that runs it
    tilelang/*.sm_90.cubin         TileLang kernels (sm_86 source -> sm_90 SASS; --own-arch adds sm_90 source)
    marlin/sgl_kernel_jit_*.so     SGLang's Marlin, repack and MoE-align modules (restricted tables)
    sgl_ops/*.py                   SGLang's Python wrappers and weight preparation (vendored, Apache-2.0)
    wheels/apache_tvm_ffi-*.whl    tvm-ffi for Python 3.12 (the Marlin modules' only Python dependency)

The builder refuses to write a kit whose manifests do not match their cubins' parameter records
or whose size is over ``--max-mb`` (default 40).
"""

from __future__ import annotations

import datetime
import json
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

from .. import envvars
from .manifest import KIT_FORMAT, kernel_sources_digest

MAX_MB = 40.0
#: The platform the borrowed GPU machine has (Python 3.12, x86_64 Linux).
WHEEL_PYTHON = "3.12"
WHEEL_PLATFORM = "manylinux_2_28_x86_64"
WHEEL_CACHE = Path(envvars.get(envvars.WHEEL_CACHE)).expanduser()


class KitBuildError(RuntimeError):
    pass


def _repo_commit() -> str:
    repo = Path(__file__).resolve().parents[2]
    try:
        out = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--", "sglang_ampere"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return out.stdout.strip() + (" (sglang_ampere/ modified)" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _version(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return "not installed"


def tvm_ffi_wheel(dest: Path, wheel: Path | None = None, log: Callable[[str], None] = print) -> Path:
    """The apache-tvm-ffi wheel (the installed version) for Python 3.12 x86_64, copied into ``dest``.

    From ``wheel`` if given, else the cache (``SGLANG_AMPERE_WHEEL_CACHE``), else ``pip download``
    (one registry request, into the cache)."""
    ver = _version("apache-tvm-ffi")
    if ver == "not installed":
        raise KitBuildError("apache-tvm-ffi is not installed; the kit carries the same version as a wheel")
    dest.mkdir(parents=True, exist_ok=True)
    if wheel is None:
        pattern = f"apache_tvm_ffi-{ver}-*.whl"
        hits = [w for w in sorted(WHEEL_CACHE.glob(pattern)) if ("cp312" in w.name or "abi3" in w.name)
                and "x86_64" in w.name]
        if not hits:
            WHEEL_CACHE.mkdir(parents=True, exist_ok=True)
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--python-version",
                   WHEEL_PYTHON, "--platform", WHEEL_PLATFORM, "-d", str(WHEEL_CACHE), f"apache-tvm-ffi=={ver}"]
            log("downloading the tvm-ffi wheel: " + " ".join(cmd))
            p = subprocess.run(cmd, capture_output=True, text=True)
            if p.returncode != 0:
                raise KitBuildError(f"pip download of apache-tvm-ffi=={ver} failed (give --tvm-ffi-wheel PATH):\n"
                                    f"{p.stderr[-2000:]}")
            hits = sorted(WHEEL_CACHE.glob(pattern))
        if not hits:
            raise KitBuildError(f"no apache-tvm-ffi {ver} wheel for Python {WHEEL_PYTHON} in {WHEEL_CACHE}")
        wheel = hits[-1]
    out = dest / Path(wheel).name
    shutil.copyfile(wheel, out)
    return out


def folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


#: SM counts of the cards a borrowed machine may have: H100 SXM (132) and H100 PCIe (114).
COVERAGE_SMS = (132, 114)


def check_coverage(manifests: list[dict], arch: int, log: Callable[[str], None] = print) -> dict:
    """Refuse a kit that lacks a kernel ``kernels.selfchecks`` requests on an sm_{arch} card with
    any of :data:`COVERAGE_SMS` multiprocessors; returns ``{sms: [kernel names]}``."""
    from .runner import requested_kernels

    keys = {m["key"] for m in manifests}
    out = {}
    for sms in COVERAGE_SMS:
        req = requested_kernels(arch, sms)
        missing = sorted({(c, n) for c, n, k in req if k not in keys})
        if missing:
            raise KitBuildError(f"the kit lacks kernels the GPU checks request on a {sms}-SM sm_{arch} card: {missing}")
        out[str(sms)] = sorted({n for _, n, _ in req})
        log(f"coverage: {len(req)} requests, {len(out[str(sms)])} distinct kernels on {sms} SMs, all in the kit")
    return out


README = """# sglang-ampere device kit

Built {built} from {commit}. Run from the repository root on the GPU machine (see docs/device-kit.md):

    P=${{PYTHON:-python3}}; S=/tmp/kit-site
    W={kit}/wheels/*.whl
    ($P -m pip install --no-index --no-deps -q --target $S $W || $P -m zipfile -e $W $S) \\
      && PYTHONPATH=$S:. timeout 540 $P -m sglang_ampere.device_kit.runner --kit {kit} --out $OUT --budget-s 450

Results: $OUT/kit_result.json (every check with its detail or traceback, timings) and $OUT/kit_summary.md.
"""


def build_kit(out: Path, arch: int = 90, source_arch: int = 86, own_arch: bool = False, tilelang: bool = True,
              marlin: bool = True, only: str | None = None, marlin_modules: list[str] | None = None,
              tvm_ffi_wheel_path: Path | None = None, wheel: bool = True, lineinfo: bool = False,
              max_mb: float = MAX_MB, log: Callable[[str], None] = print) -> dict:
    """Build the kit into ``out`` (replacing what was there); returns the kit.json content."""
    from . import export
    from . import marlin as MB

    out = Path(out).resolve()
    if out.exists():
        if not (out / "kit.json").exists() and any(out.iterdir()):
            raise KitBuildError(f"{out} exists, is not empty and holds no kit.json; refusing to replace it")
        shutil.rmtree(out)
    out.mkdir(parents=True)
    t_all = time.time()
    data: dict = {
        "format": KIT_FORMAT, "arch": arch, "source_arch": source_arch,
        "built": {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                  "host": platform.node(), "python": sys.version.split()[0], "commit": _repo_commit(),
                  "sglang": _version("sglang"), "tilelang": _version("tilelang"),
                  "apache-tvm-ffi": _version("apache-tvm-ffi"), "torch": _version("torch")},
        "tilelang": [], "marlin": {}, "wheels": [], "timings_s": {},
        "kernel_sources_sha256": kernel_sources_digest(Path(__file__).resolve().parents[2]),
    }
    if tilelang:
        t0 = time.time()
        variants = [source_arch] + ([arch] if own_arch and arch != source_arch else [])
        wanted = [w for w in (only or "").split(",") if w]
        specs = [s for s in export.kit_specs(source_arch) if not wanted or any(w in s.name for w in wanted)]
        for variant in variants:
            for spec in specs:
                t = time.time()
                m = export.export_kernel(spec, out / "tilelang" / f"sm{variant}", out, source_arch=variant, arch=arch,
                                         lineinfo=lineinfo)
                data["tilelang"].append(m.to_json())
                log(f"tilelang {spec.name} sm_{variant} -> sm_{arch}: {m.entry}, {len(m.params)} parameters "
                    f"(checked against the cubin), {time.time() - t:.1f} s")
        data["timings_s"]["tilelang"] = round(time.time() - t0, 1)
        if not only:
            data["coverage"] = check_coverage(data["tilelang"], arch, log)
    if marlin:
        t0 = time.time()
        mods = {}
        for spec in MB.MODULES:
            if marlin_modules and spec.key not in marlin_modules:
                continue
            b = MB.build_module(spec, out / "marlin", out, arch=arch, source_arch=source_arch)
            mods[spec.key] = {"module_name": b.module_name, "file": b.file, "kernels": b.kernels,
                              "kinds": list(spec.kinds), "build_s": b.seconds, "bytes": b.bytes}
            log(f"marlin {spec.key}: {b.module_name}, {b.kernels or 'all'} kernels, {b.bytes} B, {b.seconds} s")
        vendored = MB.vendor_ops(out / "sgl_ops")
        data["marlin"] = {"modules": mods, "scalar_type_ids": MB.scalar_type_ids(), "vendored": vendored}
        data["timings_s"]["marlin"] = round(time.time() - t0, 1)
    if wheel:
        w = tvm_ffi_wheel(out / "wheels", tvm_ffi_wheel_path, log)
        data["wheels"].append(str(w.relative_to(out)))
    (out / "README.md").write_text(README.format(built=data["built"]["date"], commit=data["built"]["commit"],
                                                 kit=out.name))
    data["timings_s"]["total"] = round(time.time() - t_all, 1)
    (out / "kit.json").write_text(json.dumps(data, indent=1))
    size = folder_bytes(out)
    data["size_bytes"] = size
    (out / "kit.json").write_text(json.dumps(data, indent=1))
    if size > max_mb * 1e6:
        raise KitBuildError(f"the kit is {size / 1e6:.1f} MB, over the {max_mb} MB limit (the upload allows 64 MiB "
                            "with the repository)")
    log(f"kit: {out} ({size / 1e6:.1f} MB, {len(data['tilelang'])} TileLang kernels, "
        f"{len(data['marlin'].get('modules', {}))} Marlin modules) in {data['timings_s']['total']} s")
    return data
