"""The device kit's CPU-side pieces, without building a kit: references importable without SGLang,
manifest against a real cubin's parameter records, the driver-call marshalling against a fake
``libcuda``, and that every TileLang kernel the GPU checks request is one the kit builds.

(``test_device_kit_build.py`` builds a small real kit and dry-runs the runner on it.)
"""

from __future__ import annotations

import ctypes
import subprocess
import textwrap
from pathlib import Path

import pytest
import torch
from helpers import REPO
from helpers.blocked import run_blocked

from sglang_ampere.device_kit import manifest as MF
from sglang_ampere.device_kit import runtime as RT

# --- item 4: the INT8 / INT4 references without SGLang ---------------------------------------------

def test_references_and_runner_import_without_sglang_or_tilelang():
    p = run_blocked("""
        import sglang_ampere.quant.int8_reference as a, sglang_ampere.quant.int4_reference as b
        import sglang_ampere.device_kit.runner, sglang_ampere.device_kit.runtime, sglang_ampere.device_kit.shim
        import sglang_ampere.device_kit.standins, sglang_ampere.kernels.selfchecks
        import sglang_ampere.quant.native_selfchecks
        try:
            import sglang_ampere.quant.int8_linear
        except ImportError as e:
            print("control:", e)
        print("OK", a.reference_linear.__module__, b.reference_moe.__module__)
    """)
    assert "OK sglang_ampere.quant.int8_reference sglang_ampere.quant.int4_reference" in p.stdout, p.stderr[-3000:]
    assert "control: blocked for this test: sglang" in p.stdout      # the blocker works: the method needs SGLang


def test_the_methods_reexport_the_same_reference_functions():
    pytest.importorskip("sglang")
    from sglang_ampere.quant import int4_moe, int4_reference, int8_linear, int8_reference

    assert int8_linear.reference_linear is int8_reference.reference_linear
    assert int8_linear.dequantize is int8_reference.dequantize
    assert int4_moe.reference_moe is int4_reference.reference_moe
    assert int4_moe.dequantize_expert is int4_reference.dequantize_expert


def test_int8_dequantize_refuses_an_unknown_strategy():
    from sglang_ampere.quant.int8_reference import dequantize

    with pytest.raises(ValueError, match="strategy"):
        dequantize(torch.zeros(128, 128, dtype=torch.int8), torch.ones(1, 1), "blocks")


# --- manifest against the cubin ------------------------------------------------------------------

PROBE = r"""
extern "C" __global__ void kit_probe(const unsigned short* Q, unsigned char* C, int* Idx, float* Out,
                                     int num_tokens, int width) {
  extern __shared__ float s[];
  int t = blockIdx.x;
  if (t < num_tokens && threadIdx.x < 64) {
    s[threadIdx.x] = Q[t * 64 + threadIdx.x] + C[Idx[t * width]];
    Out[t * 64 + threadIdx.x] = s[threadIdx.x] * blockIdx.y;
  }
}
"""


def probe_manifest(**changes) -> MF.KernelManifest:
    d = dict(
        key="probe", module="test", name="kit_probe", entry="kit_probe", cubin="probe.cubin", arch=90,
        source_arch=86, grid=("num_tokens", 2, 1), block=(256, 1, 1), dynamic_shared=69888,
        tensors=(MF.TensorSpec("Q", "bfloat16", ("num_tokens", 64)), MF.TensorSpec("C", "uint8", ("cache_bytes",)),
                 MF.TensorSpec("Idx", "int32", ("num_tokens", "width")),
                 MF.TensorSpec("Out", "float32", ("num_tokens", 64))),
        params=(MF.Param("ptr", tensor=0, name="Q"), MF.Param("ptr", tensor=1, name="C"),
                MF.Param("ptr", tensor=2, name="Idx"), MF.Param("ptr", tensor=3, name="Out"),
                MF.Param("int32", expr="num_tokens", name="num_tokens"), MF.Param("int32", expr="width", name="width")),
    )
    d.update(changes)
    return MF.KernelManifest(**d)


@pytest.fixture(scope="module")
def probe_cubin(tmp_path_factory) -> Path:
    from sglang_ampere.cuda_tools import find_tool

    try:
        nvcc = find_tool("nvcc")
    except FileNotFoundError as e:
        pytest.skip(f"no nvcc: {e}")
    d = tmp_path_factory.mktemp("probe")
    (d / "probe.cu").write_text(PROBE)
    p = subprocess.run([nvcc, "--cubin", "-gencode=arch=compute_86,code=sm_90", "-o", str(d / "probe.cubin"),
                        str(d / "probe.cu")], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    return d / "probe.cubin"


def test_manifest_matches_the_cubins_parameter_records_and_a_wrong_one_is_refused(probe_cubin):
    from sglang_ampere.cuda_tools import find_tool

    kp = MF.read_kparam_info(probe_cubin, find_tool("cuobjdump"))
    assert kp == {"kit_probe": [8, 8, 8, 8, 4, 4]}
    MF.check_against_cubin(probe_manifest(), kp)
    short = probe_manifest(params=probe_manifest().params[:-1])          # one int32 parameter missing
    with pytest.raises(MF.ManifestError, match="takes 6 parameters"):
        MF.check_against_cubin(short, kp)
    swapped = probe_manifest(params=(MF.Param("int32", expr="width"),) + probe_manifest().params[1:])
    with pytest.raises(MF.ManifestError, match="sizes"):
        MF.check_against_cubin(swapped, kp)
    with pytest.raises(MF.ManifestError, match="no kernel"):
        MF.check_against_cubin(probe_manifest(entry="other"), kp)


def test_manifest_refuses_dangling_references_and_round_trips_through_json():
    with pytest.raises(MF.ManifestError, match="not a symbol"):
        probe_manifest(params=(MF.Param("int32", expr="cache_words"),))
    with pytest.raises(MF.ManifestError, match="names tensor"):
        probe_manifest(params=(MF.Param("ptr", tensor=7),))
    with pytest.raises(MF.ManifestError, match="grid uses"):
        probe_manifest(grid=("rows", 1, 1))
    m = probe_manifest()
    import json

    assert MF.KernelManifest.from_json(json.loads(json.dumps(m.to_json()))) == m


def test_kparam_parser_refuses_gaps():
    dump = textwrap.dedent("""\
        .nv.info.k
        \tAttribute:\tEIATTR_KPARAM_INFO
        \tValue:\tIndex : 0x0\tOrdinal : 0x1\tOffset  : 0x8\tSize    : 0x8
        """)
    with pytest.raises(MF.ManifestError, match="gaps"):
        MF.parse_kparam_info(dump)


# --- the driver calls, against a fake libcuda --------------------------------------------------------

@pytest.fixture(scope="module")
def fake_libcuda(tmp_path_factory) -> Path:
    import shutil

    cc = shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        pytest.skip("no C compiler for the fake libcuda")
    d = tmp_path_factory.mktemp("fakecuda")
    so = d / "libfakecuda.so"
    p = subprocess.run([cc, "-shared", "-fPIC", "-O1", "-o", str(so), str(REPO / "tests/data/fake_libcuda.c")],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    return so


def _tensors(tokens=3, width=5, nbytes=1000):
    return [torch.zeros(tokens, 64, dtype=torch.bfloat16), torch.zeros(nbytes, dtype=torch.uint8),
            torch.zeros(tokens, width, dtype=torch.int32), torch.zeros(tokens, 64, dtype=torch.float32)]


def test_driver_calls_carry_the_right_image_entry_config_and_arguments(fake_libcuda, probe_cubin, tmp_path,
                                                                      monkeypatch):
    log = tmp_path / "calls.log"
    monkeypatch.setenv("FAKE_CUDA_LOG", str(log))
    drv = RT.Driver(fake_libcuda)
    m = probe_manifest()
    sizes = (ctypes.c_int * 6)(*m.param_sizes())
    drv.lib.fake_set_param_sizes(6, sizes)
    k = RT.CubinKernel(m, probe_cubin, drv, stream=lambda device: 0x1234, require_cuda=False)
    ts = _tensors()
    k(*ts)
    k(*ts)                                        # the module is loaded once
    lines = log.read_text().splitlines()
    assert lines[0] == "cuInit 0"
    assert "cuDevicePrimaryCtxRetain 0" in lines and any(ln.startswith("cuCtxSetCurrent") for ln in lines)
    assert lines.count("cuModuleLoadData 7f454c46") == 1                       # the ELF magic of the cubin
    assert lines.count("cuModuleGetFunction kit_probe") == 1
    assert "cuFuncSetAttribute 8 69888" in lines                               # opt-in dynamic shared memory
    launches = [i for i, ln in enumerate(lines) if ln.startswith("cuLaunchKernel")]
    assert len(launches) == 2
    first = launches[0]
    assert lines[first] == "cuLaunchKernel grid 3 2 1 block 256 1 1 smem 69888 stream 0x1234 extra (nil)"
    params = [ln.split()[-1] for ln in lines[first + 1:first + 7]]
    assert [int(p, 16) for p in params[:4]] == [t.data_ptr() for t in ts]
    assert [int(p, 16) for p in params[4:]] == [3, 5]


def test_launch_checks_refuse_what_tvms_host_code_refuses(fake_libcuda, probe_cubin, tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_CUDA_LOG", str(tmp_path / "calls.log"))
    k = RT.CubinKernel(probe_manifest(), probe_cubin, RT.Driver(fake_libcuda), stream=lambda d: 0, require_cuda=False)
    ts = _tensors()
    with pytest.raises(RT.LaunchError, match="dtype float16, expected bfloat16"):
        k(ts[0].half(), *ts[1:])
    with pytest.raises(RT.LaunchError, match="num_tokens is 3"):
        k(ts[0], ts[1], torch.zeros(4, 5, dtype=torch.int32), ts[3])
    with pytest.raises(RT.LaunchError, match="dimension 1 is 32, expected 64"):
        k(torch.zeros(3, 32, dtype=torch.bfloat16), *ts[1:])
    with pytest.raises(RT.LaunchError, match="not contiguous"):
        k(ts[0], ts[1], torch.zeros(5, 3, dtype=torch.int32).t(), ts[3])
    with pytest.raises(RT.LaunchError, match="3 tensors given, the kernel takes 4"):
        k(*ts[:3])
    strict = RT.CubinKernel(probe_manifest(), probe_cubin, RT.Driver(fake_libcuda), stream=lambda d: 0)
    with pytest.raises(RT.LaunchError, match="not on a CUDA device"):
        strict(*ts)
    assert not (tmp_path / "calls.log").exists() or "cuLaunchKernel" not in (tmp_path / "calls.log").read_text()


def test_a_driver_error_names_the_call_and_the_error(fake_libcuda, probe_cubin, tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_CUDA_LOG", str(tmp_path / "calls.log"))
    k = RT.CubinKernel(probe_manifest(entry="fail_probe"), probe_cubin, RT.Driver(fake_libcuda), stream=lambda d: 0,
                       require_cuda=False)
    with pytest.raises(RT.DriverError, match=r"cuModuleGetFunction\(fail_probe\) failed: CUDA_ERROR_NOT_FOUND"):
        k(*_tensors())


# --- coverage: every kernel the GPU checks request is one the kit builds ------------------------------

@pytest.mark.parametrize("sms", [132, 114])
def test_every_tilelang_kernel_the_gpu_checks_request_is_in_the_kit(sms, monkeypatch):
    monkeypatch.setenv("SGLANG_AMPERE_TARGET", "ampere")
    from sglang_ampere.device_kit.export import kit_specs
    from sglang_ampere.device_kit.runner import requested_kernels
    from sglang_ampere.kernels import selfchecks

    req = requested_kernels(90, sms)
    assert len(req) == len(selfchecks.gpu_checks()) == 19              # every check requests a kernel
    keys = {repr(s) for s in kit_specs(86)}
    assert not [r for r in req if r[2] not in keys]
    names = {n for _, n, _ in req}
    assert {"sparse_mla_paged_c4_prefill_h64", "indexer_logits_prefill_h64"} <= names
    assert any(n.startswith("sparse_mla_paged_c128_decode_s") for n in names)
    # control: a kit without the split decode kernels would be missing some
    assert [r for r in req if r[2] not in {k for k in keys if "num_splits=1," in k}]


# --- the runner's report: failures recorded with tracebacks, the time budget ------------------------

def test_report_records_a_failure_with_its_traceback_goes_on_and_respects_the_budget(tmp_path):
    import json

    from sglang_ampere.device_kit.runner import Report, summary_markdown

    def broken():
        raise RuntimeError("planted failure")

    rep = Report(tmp_path, budget_s=100.0)
    assert rep.check("s", "bad", broken) is False
    assert rep.check("s", "good", lambda: "fine") is True
    rep.timing("t", "case", lambda: {"ms": 1.0})
    saved = json.loads((tmp_path / "kit_result.json").read_text())       # written after every check
    bad, good = saved["checks"]
    assert not bad["ok"] and bad["error"] == "RuntimeError: planted failure" and "broken" in bad["traceback"]
    assert good["ok"] and good["detail"] == "fine"
    late = Report(tmp_path / "late", budget_s=10.0, min_left_s=20.0)      # less than min_left_s is left
    assert late.check("s", "skipped one", lambda: "never runs") is False
    assert late.data["checks"] == [] and late.data["skipped"] == [{"section": "s", "name": "skipped one",
                                                                    "why": "time budget"}]
    md = summary_markdown(saved)
    assert "**1/2 checks passed**" in md and "**FAIL**: RuntimeError: planted failure" in md
