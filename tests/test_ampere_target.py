"""SGLANG_AMPERE_TARGET=ampere: an sm_90+ card takes exactly the sm_80/sm_86 path.

One decision (``gpus.takes_ampere_path``) feeds the patches, the TileLang tile plans, the
launcher's preset and ``doctor``; these tests fake the card (monkeypatched capabilities, recorded
``nvidia-smi`` output, ``--gpu sm90``) and check each consumer follows it, and compile the kernels
for sm_90 to show what machine code the Ampere source becomes there.
"""

from __future__ import annotations

import pytest
import torch
from helpers.launch import make_model, smi

from sglang_ampere import envvars, gpus
from sglang_ampere.commands import doctor
from sglang_ampere.kernels import tilelang_indexer as TI
from sglang_ampere.kernels import tilelang_mla as M
from sglang_ampere.launch.launcher import LaunchError, build_spec, format_spec
from sglang_ampere.patches import dsv4_attention as D
from sglang_ampere.patches import dsv4_indexer as X

VAR = "SGLANG_AMPERE_TARGET"
ON = {VAR: "ampere"}
AMPERE_SWITCHES = {"SGLANG_OPT_DEEPGEMM_HC_PRENORM": "0", "SGLANG_OPT_USE_TOPK_V2": "0",
                   "SGLANG_FP8_PAGED_MQA_LOGITS_TORCH": "1", "SGLANG_OPT_USE_TILELANG_INDEXER": "0",
                   "SGLANG_OPT_FLASHMLA_SPARSE_PREFILL": "0", "SGLANG_OPT_FUSE_WQA_WKV": "0",
                   "SGLANG_OPT_USE_TILELANG_MHC_PRE": "0", "SGLANG_OPT_USE_TILELANG_MHC_POST": "0",
                   "SGLANG_OPT_FUSE_MHC_POST_PRE": "0"}


@pytest.mark.parametrize("cap, off, on", [
    ((7, 5), False, False),     # below sm_80 nothing runs, target or not
    ((8, 0), True, True), ((8, 6), True, True), ((8, 9), True, True),
    ((9, 0), False, True), ((10, 0), False, True), ((12, 0), False, True),
])
def test_one_decision(cap, off, on):
    assert gpus.takes_ampere_path(cap, {}) is off and gpus.takes_ampere_path(cap, {VAR: "auto"}) is off, (
        f"sm{cap}: default should be {off}")
    assert gpus.takes_ampere_path(cap, ON) is on, f"sm{cap} under {VAR}=ampere should be {on}"


def test_bad_value_refused_and_declared():
    with pytest.raises(ValueError, match="SGLANG_AMPERE_TARGET='hopper' is not one of auto, ampere, cpu"):
        gpus.takes_ampere_path((9, 0), {VAR: "hopper"})
    var = envvars.VARS[VAR]
    assert (var.default, var.choices) == ("auto", ("auto", "ampere", "cpu")), var
    # the CPU target is not the Ampere path on a card: an sm_90 card stays on SGLang's own kernels
    assert not gpus.takes_ampere_path((9, 0), {VAR: "cpu"}) and gpus.preset_arch("sm90", {VAR: "cpu"}) == "sm90"


@pytest.mark.parametrize("card, env, preset", [
    ("sm90", {}, "sm90"), ("sm90", ON, "sm80"), ("sm120", ON, "sm80"), ("sm100", ON, "sm80"),
    ("sm86", ON, "sm86"), ("sm89", ON, "sm89"), ("sm80", {}, "sm80"),
])
def test_preset_arch(card, env, preset):
    got = gpus.preset_arch(card, env)
    assert got == preset, f"{card} {env}: {got} != {preset}"


@pytest.fixture
def fake_card(monkeypatch):
    """Set the 'current CUDA device' to a capability; needs_ampere_path's cache is cleared around."""
    def set_cap(cap):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: cap)
        D.needs_ampere_path.cache_clear()
    yield set_cap
    D.needs_ampere_path.cache_clear()


@pytest.mark.parametrize("cap, env, expect", [
    ((9, 0), {}, False), ((9, 0), ON, True), ((12, 0), ON, True), ((8, 6), {}, True), ((8, 6), ON, True),
])
def test_patches_follow_the_decision(fake_card, monkeypatch, cap, env, expect):
    monkeypatch.delenv(VAR, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    fake_card(cap)
    assert D.needs_ampere_path() is expect, f"needs_ampere_path on sm{cap} with {env}"
    # The indexer patch asks the same function: its hook reroutes exactly when the decision says so.
    monkeypatch.setattr(X, "indexer_impl", lambda name: (lambda *a, **k: f"ours:{name}"))
    got = X.paged_mqa_logits_hook(lambda *a, **k: "original", "q")
    want = f"ours:{envvars.VARS['SGLANG_AMPERE_INDEXER_BACKEND'].default}" if expect else "original"
    assert got == want, f"indexer hook on sm{cap} with {env}: {got} != {want}"
    # The attention patch's AROUND hook on _use_sparse_prefill: False on the Ampere path, else SGLang's.
    got = D.use_sparse_prefill_hook(lambda *a, **k: "original", object())
    assert got == (False if expect else "original"), f"_use_sparse_prefill hook on sm{cap} with {env}: {got}"


#: Largest shared memory per block (opt-in) of the archs newer than sm_89: the sm_86 plans fit all.
NEWER_SMEM = {90: 227 * 1024, 100: 227 * 1024, 103: 227 * 1024, 120: 99 * 1024, 121: 99 * 1024}


@pytest.mark.parametrize("mod", [M, TI], ids=["sparse_mla", "indexer"])
def test_tile_plans_on_newer_arches(mod, monkeypatch):
    monkeypatch.delenv(VAR, raising=False)
    for arch in NEWER_SMEM:
        with pytest.raises(ValueError, match="SGLANG_AMPERE_TARGET=ampere"):
            mod.plan_for(arch)
    monkeypatch.setenv(VAR, "ampere")
    for arch, limit in NEWER_SMEM.items():
        plan = mod.plan_for(arch)
        assert plan == mod.PLANS[86], f"sm_{arch}: {plan} is not the sm_86 plan"
        assert plan.shared_bytes() <= limit, f"sm_{arch}: plan needs {plan.shared_bytes()} B shared > {limit}"
        assert mod.target_for(arch) == {"kind": "cuda", "arch": f"sm_{arch}"}, (
            f"sm_{arch}: built for {mod.target_for(arch)}, not the card's arch")
    # The Hopper-only lowerings are switched off in the one pass configuration every build uses.
    for key in ("tl.disable_tma_lower", "tl.disable_warp_specialized", "tl.disable_wgmma"):
        assert mod.PASS_CONFIGS.get(key) is True, f"{mod.__name__}.PASS_CONFIGS lacks {key}"


def test_marlin_methods_on_sm90(monkeypatch):
    """dsv4_int's INT8 method takes Marlin on any sm_80+ card (no arch ceiling), target or not."""
    from sglang_ampere.quant import int8_linear

    for cap in ((8, 6), (9, 0), (12, 0)):
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a, c=cap: c)
        assert int8_linear.marlin_usable(torch.device("cuda", 0)), f"Marlin W8A16 refused on sm{cap}"


# ----------------------------------------------------------------------------- launcher


def _plan(model, *extra, environ=None, gpu="sm90", smi_output=""):
    return build_spec(["--gpu", gpu, "--dry-run", "--model-path", str(model), *extra],
                      environ=environ or {}, smi_output=smi_output, python="python3")


def test_dry_run_sm90_with_target(tmp_path):
    model = make_model(tmp_path)
    off = _plan(model)
    on = _plan(model, environ=dict(ON))
    via_flag = _plan(model, "--env", f"{VAR}=ampere")
    assert off.arch == "sm90" and off.preset.source == "sm90", (off.arch, off.preset.source)
    for plan in (on, via_flag):
        assert (plan.arch, plan.card_arch, plan.preset.source) == ("sm80", "sm90", "sm80"), (
            plan.arch, plan.card_arch, plan.preset.source)
        missing = {k: v for k, v in AMPERE_SWITCHES.items() if plan.env.get(k) != v}
        assert not missing, f"Ampere switches not applied: {missing}"
        assert plan.env.get(VAR) == "ampere", "the variable must reach SGLang's processes (the patches read it there)"
        for flag, value in (("--context-length", "131072"), ("--chunked-prefill-size", "8192")):
            i = plan.argv.index(flag)
            assert plan.argv[i + 1] == value, f"{flag} {plan.argv[i + 1]}"
        text = format_spec(plan)
        for want in ("SGLANG_AMPERE_TARGET=ampere: this sm90 card takes the sm_80/sm_86 path (preset sm80",
                     "# sparse MLA below sm_90: prefill=tilelang decode=tilelang",
                     "# C4 indexer below sm_90: tilelang"):
            assert want in text, f"{want!r} missing from:\n{text}"
    text = format_spec(off)
    assert "SGLANG_AMPERE_TARGET" not in text and "sparse MLA below sm_90" not in text, (
        f"the target line appears without the variable:\n{text}")


def test_dry_run_real_h100_node(tmp_path):
    """Detected H100s (recorded nvidia-smi), --gpu auto: the same switch, no 'mismatch' note."""
    model = make_model(tmp_path)
    plan = _plan(model, "--pp-size", "2", environ=dict(ON), gpu="auto", smi_output=smi("h100_80gb_hbm3_x8"))
    assert (plan.arch, plan.card_arch) == ("sm80", "sm90"), (plan.arch, plan.card_arch)
    assert not any("chosen, but this node has" in str(n) for n in map(str, plan.notes)), plan.notes


def test_native_checkpoint_judged_like_ampere(tmp_path):
    """Under the target an H100 takes the native checkpoint as an Ampere card would: one without
    MXFP4 routed experts (here: none in its headers) is refused, as on sm_86; without the target it
    is SGLang's own FP8 path. (The MXFP4 release taking the [native] table: test_launch_native.)"""
    native = make_model(tmp_path, quant_method="fp8", name="native")
    # sm90 without the target: SGLang's own FP8 path
    assert not _plan(native).native_path, "sm_90 without the target added the [native] table"
    with pytest.raises(LaunchError, match="below sm_90 only MXFP4 experts"):
        _plan(native, environ=dict(ON))


def test_bad_target_value_is_a_launch_error(tmp_path):
    with pytest.raises(LaunchError, match="SGLANG_AMPERE_TARGET='yes'"):
        _plan(make_model(tmp_path), environ={VAR: "yes"})


def test_ampere_card_unchanged(tmp_path):
    model = make_model(tmp_path)
    a, b = _plan(model, gpu="sm86"), _plan(model, gpu="sm86", environ=dict(ON))
    assert (b.arch, b.preset.source) == ("sm86", "sm86") and a.argv == b.argv, (b.arch, b.argv)
    assert "SGLANG_AMPERE_TARGET=ampere: this" not in format_spec(b), (
        "no target line where the card takes the Ampere path anyway")


# ----------------------------------------------------------------------------- doctor


def test_doctor_says_when_on():
    checks, preset = doctor.check_target(dict(ON), "sm90")
    assert preset == "sm80" and [c.status for c in checks] == [doctor.WARN] and "is on" in checks[0].detail, (
        preset, checks)
    checks, preset = doctor.check_target({}, "sm90")
    assert not checks and preset == "sm90", (preset, checks)
    checks, preset = doctor.check_target({VAR: "x"}, "sm90")
    assert [c.status for c in checks] == [doctor.FAIL], checks
    # The environment is then checked against the stand-in preset: a contradicting Ampere switch fails.
    env = {**ON, "SGLANG_OPT_USE_TOPK_V2": "1"}
    preset_arch = doctor.check_target(env, "sm90")[1]
    bad = [c for c in doctor.check_env_against_preset(preset_arch, env) if c.status == doctor.FAIL]
    assert preset_arch == "sm80" and bad and "SGLANG_OPT_USE_TOPK_V2" in bad[0].detail, bad


# ----------------------------------------------------------------------------- machine code


@pytest.mark.slow
@pytest.mark.parametrize("mod", [M, TI], ids=["sparse_mla", "indexer"])
def test_sm90_machine_code_is_the_ampere_path(mod, tmp_path, monkeypatch):
    """Lower the prefill kernel for sm_90 with its module's pass configuration, compile with nvcc
    (no GPU needed) and read the SASS: tensor cores through HMMA (mma.sync, as on sm_86), no
    Hopper WGMMA (HGMMA), no TMA (UTMA*/UBLKCP), no traps. The sparse-MLA kernel may keep one
    STSM (stmatrix) for the fragment -> shared copy of P; see its PASS_CONFIGS comment."""
    import re

    from sglang_ampere.commands import kernel_report as KR
    from sglang_ampere.cuda_tools import read_sass

    try:
        KR.find_tool("nvcc")
    except Exception as exc:
        pytest.skip(f"nvcc not found: {exc}")
    monkeypatch.setenv(VAR, "ampere")
    spec = mod.report_specs(90)[0]
    src, _ = KR.lower_to_cuda(spec, 90)
    cubin = tmp_path / f"{spec.name}.cubin"
    KR.nvcc_cubin(src, 90, cubin)
    sass = read_sass(cubin)
    count = {op: len(re.findall(rf"\b{op}\b", sass)) for op in ("HMMA", "HGMMA", "UTMALDG", "UTMASTG",
                                                                  "UBLKCP", "BPT.TRAP", "STSM")}
    assert count["HMMA"] != 0, f"{spec.name}: no HMMA on sm_90: {count}"
    hopper = {k: v for k, v in count.items() if k in ("HGMMA", "UTMALDG", "UTMASTG", "UBLKCP", "BPT.TRAP") and v}
    assert not hopper, f"{spec.name}: Hopper-only or trap instructions on sm_90: {hopper}"
    assert count["STSM"] <= (2 if mod is M else 0), f"{spec.name}: {count['STSM']} STSM"
