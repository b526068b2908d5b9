"""`launch` with the native FP8/FP4 checkpoint: accepted below sm_90 with the preset's [native]
settings (SGLang's own argument checks run on the final command), refused where it cannot work,
and the dsv4_int path unchanged."""

import shutil

import pytest
from helpers.launch import make_model, make_native_shard, smi

from sglang_ampere.launch.launcher import LaunchError, build_spec, format_spec
from sglang_ampere.launch.presets import load_builtin

NATIVE_ARG = ["--moe-runner-backend", "marlin", "--moe-a2a-backend", "none"]


def plan_for(model, *extra, environ=None, gpu="sm86", smi_output=""):
    environ = {"PATH": "/usr/bin"} if environ is None else environ
    return build_spec(["--gpu", gpu, "--dry-run", "--model-path", str(model), *extra],
                      environ=environ, smi_output=smi_output)


def native_changes(plan):
    return {c.name: c.new for c in plan.changes if c.source.endswith("[native]")}


@pytest.mark.parametrize("arch", ["sm80", "sm86", "sm89"])
def test_native_checkpoint_accepted_below_sm90_with_the_native_table(synth_ckpt, arch):
    plan = plan_for(synth_ckpt, gpu=arch)
    preset = load_builtin(arch)
    assert preset.native_env and preset.native_args
    assert plan.native_path
    # every [native] variable set, labelled, and every [native] argument appended after the preset's
    assert native_changes(plan) == {e.name: e.value for e in preset.native_env}
    assert plan.argv[-4:] == NATIVE_ARG
    assert {a.flag for a in plan.preset_args_used} >= {a.flag for a in preset.native_args}
    text = format_spec(plan)
    assert "#   --moe-runner-backend marlin  [native] " in text
    assert "#   --context-length 65536  the" in text or "#   --context-length 131072  the" in text
    assert "SGLANG_FORCE_FP8_MARLIN=1 \\" in text and "[preset " + arch + " [native]; unset]" in text
    assert any("native FP8/FP4 checkpoint, served without conversion" in n for n in map(str, plan.notes))


def test_dsv4_int_path_gets_no_native_setting(model):
    plan = plan_for(model)
    names = {c.name for c in plan.changes}
    assert not plan.native_path
    assert not names & {e.name for e in load_builtin("sm86").native_env}
    assert "--moe-runner-backend" not in plan.argv


@pytest.mark.parametrize("arch", ["sm90", "sm120"])
def test_native_on_sm90_plus_is_sglangs_own_path(synth_ckpt, arch):
    plan = plan_for(synth_ckpt, gpu=arch)
    assert not plan.native_path and not native_changes(plan)
    assert "--moe-runner-backend" not in plan.argv
    assert any("runs on SGLang's own kernels" in n for n in map(str, plan.notes))


def test_ampere_target_on_hopper_takes_the_native_table(synth_ckpt):
    plan = build_spec(["--dry-run", "--model-path", str(synth_ckpt)], smi_output=smi("h100_80gb_hbm3_x8"),
                      environ={"PATH": "/usr/bin", "SGLANG_AMPERE_TARGET": "ampere"})
    assert plan.arch == "sm80" and plan.card_arch == "sm90" and plan.native_path
    assert plan.argv[-4:] == NATIVE_ARG and native_changes(plan)["SGLANG_FORCE_FP8_MARLIN"] == "1"


# ----------------------------------------------------------------------------- conflicts


@pytest.mark.parametrize("spelling", [["--moe-runner-backend", "triton"], ["--moe-runner-backend=flashinfer_mxfp4"],
                                      ["--moe-a2a-backend", "deepep"]])
def test_conflicting_moe_runner_backend_is_an_error_naming_the_flag(synth_ckpt, spelling):
    flag = spelling[0].split("=")[0]
    with pytest.raises(LaunchError, match=rf"^{flag} \w+ cannot serve the native FP8/FP4 checkpoint: "
                                          rf".*Drop {flag}, or pass {flag} (marlin|none)$"):
        plan_for(synth_ckpt, *spelling)


def test_conflicting_moe_runner_backend_in_config_yaml_too(synth_ckpt, tmp_path):
    cfg = tmp_path / "serve.yaml"
    cfg.write_text("moe-runner-backend: triton\n")
    with pytest.raises(LaunchError, match=r"--moe-runner-backend triton cannot serve the native"):
        plan_for(synth_ckpt, "--config", str(cfg))


def test_the_same_moe_runner_backend_is_fine_and_not_repeated(synth_ckpt):
    plan = plan_for(synth_ckpt, *NATIVE_ARG[:2])
    assert plan.argv.count("--moe-runner-backend") == 1
    assert [a.flag for a in plan.preset_args_kept] == ["--moe-runner-backend"]
    assert plan.argv[-2:] == NATIVE_ARG[2:]


@pytest.mark.parametrize("how", ["environ", "--env"])
def test_required_variable_conflict_is_an_error_naming_it(synth_ckpt, how):
    environ = {"PATH": "/usr/bin"}
    extra = []
    if how == "environ":
        environ["SGLANG_DSV4_FP4_DEQUANT"] = "1"
    else:
        extra = ["--env", "SGLANG_DSV4_FP4_DEQUANT=1"]
    where = "your environment" if how == "environ" else "--env"
    with pytest.raises(LaunchError, match=rf"^SGLANG_DSV4_FP4_DEQUANT=1 \(from {where}\) cannot serve the native "
                                          r".*Unset it, or set SGLANG_DSV4_FP4_DEQUANT=0$"):
        plan_for(synth_ckpt, *extra, environ=environ)


@pytest.mark.parametrize("value, refused", [("false", False), ("no", False), ("0", False), ("true", True),
                                             ("2", True)])
def test_required_variable_is_compared_as_sglang_reads_it(synth_ckpt, value, refused):
    """SGLANG_DSV4_FP4_DEQUANT is SGLang's EnvBool: "false" and "no" are the preset's 0 and pass;
    "true" and a value SGLang cannot read are refused (controls)."""
    environ = {"PATH": "/usr/bin", "SGLANG_DSV4_FP4_DEQUANT": value}
    if refused:
        with pytest.raises(LaunchError, match=rf"^SGLANG_DSV4_FP4_DEQUANT={value} \(from your environment\)"):
            plan_for(synth_ckpt, environ=environ)
    else:
        plan = plan_for(synth_ckpt, environ=environ)
        assert plan.env["SGLANG_DSV4_FP4_DEQUANT"] == value, "the user's spelling is kept"
        assert not any("SGLANG_DSV4_FP4_DEQUANT" in str(n) for n in plan.notes), plan.notes


def test_dsv4_int_ignores_native_requirements(model):
    plan = plan_for(model, "--moe-runner-backend", "triton", environ={"PATH": "/usr/bin",
                                                                      "SGLANG_DSV4_FP4_DEQUANT": "1"})
    assert plan.argv.count("--moe-runner-backend") == 1 and "triton" in plan.argv


def test_optional_native_variable_keeps_the_users_value_with_a_note(synth_ckpt):
    plan = plan_for(synth_ckpt, gpu="sm89", environ={"PATH": "/usr/bin", "SGLANG_FORCE_FP8_MARLIN": "0"})
    assert "SGLANG_FORCE_FP8_MARLIN" not in native_changes(plan) and plan.env["SGLANG_FORCE_FP8_MARLIN"] == "0"
    assert any(n.startswith("note: keeping your SGLANG_FORCE_FP8_MARLIN=0 over preset sm89 [native]'s 1")
               for n in map(str, plan.notes))


# ----------------------------------------------------------------------------- refusals


@pytest.mark.parametrize("dtype", ["F8_E4M3", "BF16"])
def test_native_with_non_mxfp4_experts_is_refused_below_sm90(tmp_path, dtype):
    d = make_native_shard(tmp_path, dtype)
    with pytest.raises(LaunchError, match=rf"routed experts are {dtype}; below sm_90 only MXFP4 experts"):
        plan_for(d)


def test_native_without_shards_is_refused_below_sm90(tmp_path):
    d = make_model(tmp_path, "fp8")
    with pytest.raises(LaunchError, match=r"routed experts are not found in the shard headers"):
        plan_for(d, gpu="sm80")


@pytest.mark.parametrize("dtype, mxfp4", [("I8", True), ("U8", True), ("F8_E4M3", False)])
def test_expert_dtype_read_from_one_header(tmp_path, dtype, mxfp4):
    from sglang_ampere.checkpoint_format import NATIVE, detect

    found = detect(make_native_shard(tmp_path, dtype))
    assert (found.kind, found.expert_dtype, found.mxfp4_experts) == (NATIVE, dtype, mxfp4)


def test_user_preset_without_native_table_is_refused(synth_ckpt, tmp_path):
    mine = tmp_path / "mine.toml"
    mine.write_text('[preset]\narch = "sm86"\n\n[[env]]\nname = "SGLANG_OPT_USE_TOPK_V2"\nvalue = "0"\nreason = "r"\n')
    with pytest.raises(LaunchError, match=r"preset .*mine.toml has no \[native\] table .*extends = \"sm86\""):
        plan_for(synth_ckpt, "--preset", str(mine))
    mine.write_text('[preset]\nextends = "sm86"\n')
    assert plan_for(synth_ckpt, "--preset", str(mine)).argv[-4:] == NATIVE_ARG


def test_unknown_quant_method_names_both_accepted(tmp_path):
    d = make_model(tmp_path, "gptq")
    with pytest.raises(LaunchError, match=r"expected 'dsv4_int' or the native release's 'fp8'"):
        plan_for(d)


def test_copied_native_checkpoint_keeps_its_format(synth_ckpt, tmp_path):
    """Only config.json, the index and one header are read: a copy without the other shards' data
    is still recognised (the launcher never reads tensor data)."""
    d = tmp_path / "copy"
    shutil.copytree(synth_ckpt, d)
    for p in d.glob("*.safetensors"):
        raw = p.read_bytes()
        n = int.from_bytes(raw[:8], "little")
        p.write_bytes(raw[:8 + n] + b"\0" * (len(raw) - 8 - n))
    from sglang_ampere.checkpoint_format import NATIVE, detect

    found = detect(d)
    assert (found.kind, found.expert_dtype, found.mxfp4_experts) == (NATIVE, "I8", True)


def test_release_inventory_dry_run_at_pp12_gets_the_native_plan(tmp_path):
    """The release's tensor inventory (headers only) through launch --pp-size 12: SGLang's checks
    read its real config, and the layer split is the native memory plan's."""
    from helpers.headers_only import write_headers_only

    from sglang_ampere import memory_plan as P

    d = write_headers_only(tmp_path / "release", native=True)
    plan = plan_for(d, "--pp-size", "12")
    want = P.make_plan(P.load_model(d), 12, load_builtin("sm86").min_memory_gib)
    assert plan.native_path and plan.argv[-4:] == NATIVE_ARG
    assert plan.env["SGLANG_PP_LAYER_PARTITION"] == want.partition_env
    assert "native checkpoint, 12 x 24 GiB" in plan.stage_table


def test_sglangs_own_checks_run_on_the_native_command(synth_ckpt):
    """A mismatch only SGLang's ModelConfig knows about comes back as SGLang's refusal."""
    with pytest.raises(LaunchError, match=r"SGLang 0.5.23 refuses this combination: .*\(fp8\) does not match .*"
                                          r"\(dsv4_int\)"):
        plan_for(synth_ckpt, "--quantization", "dsv4_int")


def test_cold_jit_cache_note_names_what_this_checkpoint_runs(synth_ckpt, model, tmp_path):
    """launch's start-up note lists the cold JIT modules of the checkpoint's own path: the native
    one's MXFP4 top-k sum only for the native checkpoint, nothing for SGLang's own sm_90+ path."""
    environ = {"PATH": "/usr/bin", "SGLANG_JIT_CACHE_DIR": str(tmp_path / "jit")}

    def cold_note(ckpt, *args, gpu="sm86"):
        notes = [str(n) for n in plan_for(ckpt, *args, gpu=gpu, environ=dict(environ)).notes
                 if n.code == "jit.cold-cache"]
        return notes[0] if notes else None

    native, dsv4_int = cold_note(synth_ckpt), cold_note(model)
    assert "moe_topk_sum" in native and native.endswith(
        "sglang-ampere warmup --gpu sm86 --checkpoint native --speculative none")
    assert "moe_topk_sum" not in dsv4_int and dsv4_int.endswith("--checkpoint dsv4_int --speculative none")
    assert "spec_tree" not in native + dsv4_int, "no MTP modules for a server without MTP"
    mtp = cold_note(synth_ckpt, "--speculative", "mtp", "--context-length", "4096")
    assert "spec_tree, spec_sampling" in mtp and mtp.endswith("--checkpoint native --speculative mtp")
    assert cold_note(synth_ckpt, gpu="sm90") is None
