"""`sglang-ampere doctor`: each check, its fix, and the exit code."""

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers.launch import fake_nvidia_smi, smi

from sglang_ampere.commands import doctor

CLI = Path(sys.executable).parent / "sglang-ampere"
HEALTHY_PROBE = {"targets": [["sglang_ampere.patches.x", "sglang.srt.models.deepseek_v4.f", None]],
                 "patch_errors": [], "registered": True, "cli_choice": True, "plugin_log": "",
                 "error": None, "tilelang": "0.1.12",
                 "native": {"targets": [[t, None] for t in doctor.NATIVE_TARGETS], "patched": True, "gate": True,
                            "marlin": True}}


def by_name(checks):
    out = {}
    for c in checks:
        out.setdefault(c.name, []).append(c)
    return out


def collect(environ=None, recorded="rtx3090_x4", probe=None, gpu="auto", model_path=None):
    environ = {"PATH": os.environ["PATH"]} if environ is None else environ
    return doctor.collect(environ=environ, smi_output=smi(recorded) if recorded else "",
                          gpu=gpu, probe=HEALTHY_PROBE if probe is None else probe, model_path=model_path)


def test_healthy_box():
    checks = by_name(collect())
    assert checks["gpus"][0].status == doctor.OK
    assert checks["gpus"][0].detail.count("NVIDIA GeForce RTX 3090 (sm86, 24 GiB)") == 4
    assert checks["preset"][0].status == doctor.OK and checks["preset"][0].detail.startswith("sm86")
    assert checks["environment"][0].status == doctor.OK
    assert checks["dsv4_int registered"][0].status == doctor.OK
    assert checks["patch hook targets"][0].detail == "1 target(s) importable"


def test_contradicting_environment_fails_with_fix():
    env = {"PATH": os.environ["PATH"], "SGLANG_OPT_USE_TOPK_V2": "1", "SGLANG_OPT_DEEPGEMM_HC_PRENORM": "0"}
    bad = [c for c in collect(env) if c.name == "environment"]
    assert len(bad) == 1 and bad[0].status == doctor.FAIL
    assert "SGLANG_OPT_USE_TOPK_V2=1 contradicts preset sm86" in bad[0].detail
    assert bad[0].fix.startswith("unset SGLANG_OPT_USE_TOPK_V2")


def test_fork_variable_is_explained():
    env = {"PATH": os.environ["PATH"], "SGLANG_APPLY_CONFIG_BACKUP": "none"}
    warn = [c for c in collect(env) if c.name == "fork-era variable"]
    assert warn[0].status == doctor.WARN and "never reads it" in warn[0].detail


def test_mixed_box_and_no_gpu():
    assert [c.status for c in collect(recorded="mixed_3090_4090_a6000") if c.name == "preset"] == [doctor.FAIL]
    checks = by_name(collect(recorded=None))
    assert checks["gpus"][0].status == doctor.FAIL and checks["gpus"][0].fix
    assert "preset" not in checks
    assert [c.status for c in collect(recorded=None, gpu="sm86") if c.name == "preset"] == [doctor.OK]


def test_cpu_target_wants_no_gpu_and_no_cuda_toolkit(tmp_path):
    """``--gpu cpu`` is launch's CPU target: no GPU, nvcc or CUDA header is looked for; the same
    bare machine fails them for a GPU preset (control)."""
    bare = {"PATH": str(tmp_path)}                       # no nvcc, no nvidia-smi, no CUDA_HOME
    cpu = by_name(collect(bare, recorded=None, gpu="cpu"))
    assert all(c.status == doctor.OK for group in cpu.values() for c in group), cpu
    assert cpu["preset"][0].detail.startswith("cpu") and "nvcc" not in cpu
    assert cpu["JIT tools"][0].verdict.code == "doctor.jit-not-needed"
    gpu = by_name(collect(bare, recorded=None, gpu="sm86"))
    assert gpu["gpus"][0].status == doctor.FAIL and "--gpu cpu" in gpu["gpus"][0].fix
    assert gpu["nvcc"][0].status == doctor.FAIL and "JIT tools" not in gpu


def test_required_variable_says_launch_refuses_it():
    """The cpu preset requires SGLANG_AMPERE_TARGET=cpu: another value is refused by launch, and
    doctor says so (a plain preset variable is kept over the preset's, control)."""
    env = {"PATH": os.environ["PATH"], "SGLANG_AMPERE_TARGET": "ampere"}
    bad = [c for c in collect(env, recorded=None, gpu="cpu") if c.name == "environment"]
    assert len(bad) == 1 and bad[0].status == doctor.FAIL and "SGLANG_AMPERE_TARGET=ampere" in bad[0].detail
    assert "launch refuses it" in bad[0].fix
    env = {"PATH": os.environ["PATH"], "SGLANG_OPT_USE_TOPK_V2": "1"}
    kept = [c for c in collect(env) if c.name == "environment"]
    assert "launch keeps your value" in kept[0].fix and "refuses" not in kept[0].fix


@pytest.mark.parametrize("probe, name, text", [
    ({**HEALTHY_PROBE, "registered": False}, "dsv4_int registered", "missing from QUANTIZATION_METHODS"),
    ({**HEALTHY_PROBE, "cli_choice": False}, "dsv4_int registered", "--quantization choices"),
    ({**HEALTHY_PROBE, "targets": [["m", "sglang.srt.x.gone", "ModuleNotFoundError: gone"]]},
     "patch hook target", "sglang.srt.x.gone (m): ModuleNotFoundError"),
    ({**HEALTHY_PROBE, "patch_errors": [["m", "ImportError: boom"]]}, "patch module", "m: ImportError: boom"),
    ({"error": "ImportError: no sglang"}, "sglang import + plugin load", "ImportError: no sglang"),
    ({**HEALTHY_PROBE, "tilelang": None, "tilelang_error": "ImportError: x"}, "tilelang", "does not import"),
    ({**HEALTHY_PROBE,
      "native": {**HEALTHY_PROBE["native"], "targets": [[doctor.NATIVE_TARGETS[0], "AttributeError: x"]]}},
     "native checkpoint path", "Mxfp4MarlinMoEMethod.process_weights_after_loading: AttributeError"),
    ({**HEALTHY_PROBE, "native": {**HEALTHY_PROBE["native"], "marlin": None, "marlin_error": "ValueError: v"}},
     "native checkpoint path", "'marlin' is not a MoE runner backend (ValueError: v)"),
    ({**HEALTHY_PROBE, "native": {**HEALTHY_PROBE["native"], "patched": False}},
     "native checkpoint path", "dsv4_native is not in sglang_ampere.patches.PATCH_MODULES"),
])
def test_probe_failures_have_fixes(probe, name, text):
    hits = [c for c in collect(probe=probe) if c.name == name]
    assert hits and hits[0].status == doctor.FAIL and text in hits[0].detail and hits[0].fix


def test_plugin_filtered_by_sglang_plugins():
    env = {"PATH": os.environ["PATH"], "SGLANG_PLUGINS": "smg-zmq"}
    ep = [c for c in collect(env) if c.name == "plugin entry point"][0]
    assert ep.status == doctor.FAIL and "does not list sglang_ampere" in ep.detail


def test_render_and_exit_code(monkeypatch, capsys):
    monkeypatch.setattr(doctor, "collect", lambda gpu, model_path: [doctor.ok("a", "a", "fine"),
                                                                    doctor.fail("b", "b", "broken", "do X")])
    assert doctor.run(argparse.Namespace(json=False, gpu="auto")) == 1
    out = capsys.readouterr().out
    assert "[FAIL] b: broken\n       fix: do X" in out and out.rstrip().endswith("1 failure(s)")
    monkeypatch.setattr(doctor, "collect", lambda gpu, model_path: [doctor.warn("a", "a", "meh", "y")])
    assert doctor.run(argparse.Namespace(json=True, gpu="auto")) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] is True
    assert report["checks"] == [{"name": "a", "status": "warn", "code": "doctor.a", "detail": "meh", "fix": "y"}]


def test_checks_carry_notes_with_levels_and_codes():
    checks = by_name(collect(recorded=None))
    assert checks["gpus"][0].verdict.level == "error" and checks["gpus"][0].verdict.code == "doctor.no-gpu"
    assert str(checks["gpus"][0].verdict).startswith("error: no GPU: ")
    assert all(c.status == doctor.STATUS[c.verdict.level] for c in collect())


def test_sglang_pin_and_its_override_as_the_plugin_sees_them():
    """doctor asks the plugin's own question (sglang_pin.pin_problem): the override is a warning, not a pass."""
    from sglang_ampere import SGLANG_PIN, sglang_pin

    assert doctor.check_sglang_version({}, SGLANG_PIN).status == doctor.OK
    wrong = doctor.check_sglang_version({}, "0.0.1")
    assert wrong.status == doctor.FAIL and wrong.verdict.code == "sglang.unpinned"
    assert f"written for SGLang {SGLANG_PIN}, but SGLang 0.0.1 is installed" in wrong.detail
    assert wrong.fix == f"pip install 'sglang=={SGLANG_PIN}'"
    allowed = doctor.check_sglang_version({"SGLANG_AMPERE_ALLOW_ANY_SGLANG": "1"}, "0.0.1")
    assert allowed.status == doctor.WARN and allowed.verdict.code == "sglang.unpinned-allowed"
    missing = doctor.check_sglang_version({"SGLANG_AMPERE_ALLOW_ANY_SGLANG": "1"}, None)
    assert missing.status == doctor.FAIL and "sglang-ampere[serve]" in missing.fix
    assert sglang_pin.pin_problem(SGLANG_PIN, {}) is None


@pytest.mark.slow
def test_doctor_json_end_to_end(tmp_path):
    """Fresh-process probe against the installed SGLang, with a recorded 4 x 3090 nvidia-smi."""
    env = fake_nvidia_smi(tmp_path, "rtx3090_x4")
    env["SGLANG_JIT_CACHE_DIR"] = str(tmp_path / "jit")
    cmd = [str(CLI)] if CLI.exists() else [sys.executable, "-m", "sglang_ampere.cli"]
    proc = subprocess.run(cmd + ["doctor", "--json"], capture_output=True, text=True, env=env, timeout=600)
    report = json.loads(proc.stdout)
    status = {c["name"]: c["status"] for c in report["checks"]}
    assert status["sglang version"] == "ok"
    assert status["plugin entry point"] == "ok"
    assert status["patch hook targets"] == "ok", report
    assert status["dsv4_int registered"] == "ok", report
    assert status["native checkpoint path"] == "ok", report
    assert status["tilelang"] == "ok"
    assert status["gpus"] == "ok" and status["preset"] == "ok" and status["environment"] == "ok"
    assert status["jit cache"] == "warn"
    assert {c["code"] for c in report["checks"] if c["name"] == "jit cache"} == {"jit.cold-cache"}
    failed = [c["name"] for c in report["checks"] if c["status"] == "fail"]
    assert set(failed) <= {"nvcc", "CUDA_HOME", "CUDA headers"}   # depends on the host's CUDA toolkit only
    assert proc.returncode == (1 if failed else 0) and report["ok"] == (not failed)


def fake_toolkit(root, headers=("cuda_runtime.h",), nvcc=True):
    """A CUDA toolkit folder: bin/nvcc (prints a release line), lib64/libcudart.so, include/<headers>."""
    home = root / "cuda-13.0"
    for d in ("bin", "lib64", "include"):
        (home / d).mkdir(parents=True, exist_ok=True)
    (home / "lib64" / "libcudart.so.13").write_bytes(b"")
    for h in headers:
        (home / "include" / h).parent.mkdir(parents=True, exist_ok=True)
        (home / "include" / h).write_text("/* header */\n")
    if nvcc:
        exe = home / "bin" / "nvcc"
        exe.write_text("#!/bin/sh\necho 'Cuda compilation tools, release 13.0, V13.0.88'\n")
        exe.chmod(0o755)
    return home


def jit_checks(home, **extra):
    env = {"PATH": f"{home / 'bin'}{os.pathsep}/usr/bin{os.pathsep}/bin", "CUDA_HOME": str(home), **extra}
    return [c for c in doctor.check_jit_tools(env, None) if c.name in ("nvcc", "CUDA_HOME", "CUDA headers")]


def test_toolkit_with_every_header_passes(tmp_path):
    home = fake_toolkit(tmp_path, headers=("cuda_runtime.h", "curand.h"))
    checks = jit_checks(home)
    assert [(c.name, c.status) for c in checks] == [("nvcc", doctor.OK), ("CUDA_HOME", doctor.OK),
                                                   ("CUDA headers", doctor.OK), ("CUDA headers", doctor.OK)]
    assert "release 13.0" in checks[0].detail


def test_missing_curand_header_fails_with_its_fix(tmp_path):
    home = fake_toolkit(tmp_path)
    bad = [c for c in jit_checks(home) if c.status == doctor.FAIL]
    assert len(bad) == 1 and bad[0].name == "CUDA headers"
    assert bad[0].detail.startswith(f"curand.h is not in the CUDA toolkit at {home}")
    assert "FlashInfer's sampling kernels" in bad[0].detail
    assert "cuRAND development headers" in bad[0].fix and "NVCC_APPEND_FLAGS='-Xcompiler=-idirafter," in bad[0].fix
    # the fix works: a folder holding curand.h behind the toolkit's headers (or before them) satisfies it
    extra = tmp_path / "curand"
    extra.mkdir()
    (extra / "curand.h").write_text("")
    for flags in (f"-Xcompiler=-idirafter,{extra}", f"-Xcompiler -idirafter,{extra}", f"-I{extra}"):
        assert all(c.status == doctor.OK for c in jit_checks(home, NVCC_APPEND_FLAGS=flags)), flags


def test_include_folder_with_another_cudas_host_stub_header_fails(tmp_path):
    """A wheel's whole include folder on -I shadows the toolkit's crt/host_runtime.h (nvcc 13.0.88
    then cannot compile any JIT module's host stub, measured here); behind the toolkit's headers,
    or holding the same header, it is fine (controls)."""
    home = fake_toolkit(tmp_path, headers=("cuda_runtime.h", "crt/host_runtime.h"))
    (home / "include" / "crt" / "host_runtime.h").write_text("#define __cudaLaunch(fun, isTileKernel)\n")
    wheel = tmp_path / "wheel_include"
    (wheel / "crt").mkdir(parents=True)
    (wheel / "curand.h").write_text("")
    (wheel / "crt" / "host_runtime.h").write_text("#define __cudaLaunch(fun)\n")
    bad = [c for c in jit_checks(home, NVCC_APPEND_FLAGS=f"-I{wheel}") if c.status == doctor.FAIL]
    assert len(bad) == 1 and bad[0].verdict.code == "doctor.header-shadowed" and str(wheel) in bad[0].detail
    assert f"-Xcompiler=-idirafter,{wheel}" in bad[0].fix
    assert all(c.status == doctor.OK for c in jit_checks(home, NVCC_APPEND_FLAGS=f"-Xcompiler=-idirafter,{wheel}"))
    (wheel / "crt" / "host_runtime.h").write_text("#define __cudaLaunch(fun, isTileKernel)\n")
    assert all(c.status == doctor.OK for c in jit_checks(home, NVCC_APPEND_FLAGS=f"-I{wheel}"))


def test_missing_runtime_header_fails(tmp_path):
    home = fake_toolkit(tmp_path, headers=("curand.h",))
    bad = [c for c in jit_checks(home) if c.status == doctor.FAIL]
    assert [c.detail.split(" ")[0] for c in bad] == ["cuda_runtime.h"] and "cudart" in bad[0].fix


def test_missing_nvcc_fails_with_its_fix(tmp_path):
    home = fake_toolkit(tmp_path, headers=("cuda_runtime.h", "curand.h"), nvcc=False)
    env = {"PATH": f"{home / 'bin'}", "CUDA_HOME": str(home)}
    nvcc = [c for c in doctor.check_jit_tools(env, None) if c.name == "nvcc"]
    assert len(nvcc) == 1 and nvcc[0].status == doctor.FAIL
    assert "whichever sparse-MLA backend" in nvcc[0].detail and "install the CUDA toolkit" in nvcc[0].fix


# ----------------------------------------------------------------------------- the native checkpoint


def test_native_path_ok_line_says_what_it_checked():
    ok = [c for c in collect() if c.name == "native checkpoint path"]
    assert len(ok) == 1 and ok[0].status == doctor.OK
    assert f"{len(doctor.NATIVE_TARGETS)} SGLang function(s) import" in ok[0].detail
    assert "lifted by sglang_ampere.patches.dsv4_native" in ok[0].detail


def test_native_targets_are_real_in_the_pinned_sglang():
    """What the probe resolves exists in the installed SGLang, the gate message included."""
    import inspect
    import pkgutil

    pytest.importorskip("sglang")
    for target in doctor.NATIVE_TARGETS:
        obj = pkgutil.resolve_name(target)
        if target.endswith(".process_weights_after_loading"):
            assert doctor.NATIVE_GATE in inspect.getsource(obj)
    from sglang_ampere.patches import PATCH_MODULES

    assert doctor.NATIVE_PATCH in PATCH_MODULES


def test_model_path_native_checkpoint_is_accepted_and_lists_what_launch_adds(synth_ckpt):
    from sglang_ampere.launch.presets import load_builtin

    ck = [c for c in collect(model_path=str(synth_ckpt)) if c.name == "checkpoint"]
    assert len(ck) == 1 and ck[0].status == doctor.OK
    assert "native FP8/FP4 (quant_method fp8; routed experts I8 = MXFP4): served without conversion on sm86" \
        in ck[0].detail
    for a in load_builtin("sm86").native_args:
        assert " ".join(a.argv()) in ck[0].detail


def test_model_path_dsv4_int_and_refusals(tmp_path, model):
    from helpers.launch import make_native_shard

    ck = [c for c in collect(model_path=str(model)) if c.name == "checkpoint"][0]
    assert ck.status == doctor.OK and "dsv4_int (INT4 experts, INT8 dense): accepted on sm86" in ck.detail
    fp8_experts = make_native_shard(tmp_path, "F8_E4M3")
    ck = [c for c in collect(model_path=str(fp8_experts)) if c.name == "checkpoint"][0]
    assert ck.status == doctor.FAIL and "routed experts are F8_E4M3; below sm_90 only MXFP4" in ck.detail
    ck = [c for c in collect(model_path=str(tmp_path / "nowhere")) if c.name == "checkpoint"][0]
    assert ck.status == doctor.FAIL and "no config.json" in ck.detail


def test_native_required_variable_fails_only_for_a_native_checkpoint(synth_ckpt, model):
    env = {"PATH": os.environ["PATH"], "SGLANG_DSV4_FP4_DEQUANT": "1"}

    def status(**kw):
        return [(c.status, c.detail) for c in collect(env, **kw) if c.name == "environment"
                and "SGLANG_DSV4_FP4_DEQUANT" in c.detail]

    native = status(model_path=str(synth_ckpt))
    assert len(native) == 1 and native[0][0] == doctor.FAIL and "launch refuses it" in native[0][1]
    unknown = status()
    assert len(unknown) == 1 and unknown[0][0] == doctor.WARN
    assert status(model_path=str(model)) == []          # dsv4_int: the [native] table does not apply
