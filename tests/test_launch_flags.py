"""Flag translation, precedence, fork-era variables and every user error of `launch`."""

import io

import pytest
from helpers.launch import PY, make_model, smi

from sglang_ampere.launch.launcher import LaunchError, build_spec, format_spec, main

PREFILL, DECODE = "SGLANG_AMPERE_PREFILL_BACKEND", "SGLANG_AMPERE_DECODE_BACKEND"


def plan_for(model, *extra, environ=None, gpu="sm86", smi_output=""):
    environ = {"PATH": "/usr/bin"} if environ is None else environ
    return build_spec(["--gpu", gpu, "--dry-run", "--model-path", str(model), *extra],
                      environ=environ, smi_output=smi_output)


def changes(plan):
    return {c.name: (c.new, c.source) for c in plan.changes}


# ----------------------------------------------------------------------------- translation


def test_nsa_flags_become_our_variables_and_never_reach_sglang(model):
    plan = plan_for(model, "--nsa-prefill-backend", "torch", "--nsa-decode-backend", "tilelang")
    assert changes(plan)[PREFILL] == ("torch", "--nsa-prefill-backend")
    assert changes(plan)[DECODE] == ("tilelang", "--nsa-decode-backend")
    assert not any(a.startswith("--nsa") for a in plan.argv)


def test_nsa_flags_after_double_dash_are_taken_too(model):
    plan = plan_for(model, "--", "--nsa-decode-backend=torch", "--nsa-prefill-backend", "torch", "--port", "8000")
    assert changes(plan)[PREFILL][0] == "torch" and changes(plan)[DECODE][0] == "torch"
    assert plan.argv[3:7] == ["--model-path", str(model), "--port", "8000"]
    assert not any(a.startswith("--nsa") for a in plan.argv)


def test_nsa_flag_bad_choice():
    with pytest.raises(SystemExit):     # argparse: invalid choice, lists torch/tilelang
        build_spec(["--gpu", "sm86", "--dry-run", "--nsa-decode-backend", "flashmla"], environ={}, smi_output="")


def test_nsa_flag_bad_choice_after_double_dash(model):
    with pytest.raises(LaunchError, match="--nsa-prefill-backend must be one of torch, tilelang"):
        plan_for(model, "--", "--nsa-prefill-backend", "tilelang_v2")


def test_hack_flashmla_backend_torch_selects_torch_for_both_phases(model):
    plan = plan_for(model, environ={"SGLANG_HACK_FLASHMLA_BACKEND": "torch"})
    assert "# sparse MLA below sm_90: prefill=torch decode=torch" in format_spec(plan)
    assert changes(plan)[PREFILL] == ("torch", "SGLANG_HACK_FLASHMLA_BACKEND")
    assert changes(plan)[DECODE] == ("torch", "SGLANG_HACK_FLASHMLA_BACKEND")
    assert any("SGLANG_HACK_FLASHMLA_BACKEND=torch: SGLang 0.5.23 reads it only on ROCm" in n
               for n in map(str, plan.notes))


def test_hack_via_env_flag_and_nsa_flag_wins_over_it(model):
    plan = plan_for(model, "--env", "SGLANG_HACK_FLASHMLA_BACKEND=torch", "--nsa-prefill-backend", "tilelang")
    assert changes(plan)[PREFILL] == ("tilelang", "--nsa-prefill-backend")
    assert changes(plan)[DECODE] == ("torch", "--env SGLANG_HACK_FLASHMLA_BACKEND")


def test_hack_other_values_do_nothing_and_say_so(model):
    plan = plan_for(model, environ={"SGLANG_HACK_FLASHMLA_BACKEND": "aiter_sparse"})
    assert PREFILL not in plan.env and DECODE not in plan.env      # package defaults (tilelang) apply
    assert "# sparse MLA below sm_90: prefill=tilelang decode=tilelang" in format_spec(plan)
    assert any("does nothing here; use --nsa-prefill-backend" in n for n in map(str, plan.notes))


@pytest.mark.parametrize("name, value, says", [
    ("SGLANG_APPLY_CONFIG_BACKUP", "none", "does nothing: SGLang 0.5.23 never reads it"),
    ("SGLANG_OPT_FP8_WO_A_GEMM", "0", "affects only the native FP8 checkpoint"),
    ("SGLANG_OPT_FUSE_WQA_WKV", "0", "unless the two differ in dtype"),
    ("SGLANG_FP8_PAGED_MQA_LOGITS_TORCH", "1", "computes indexer logits in torch"),
])
def test_fork_variables_get_one_line_each(model, name, value, says):
    plan = plan_for(model, environ={name: value})
    lines = [n for n in map(str, plan.notes) if n.startswith(f"note: {name}={value}:")]
    assert len(lines) == 1 and says in lines[0] and "\n" not in lines[0]


def test_nsa_flag_contradicting_env_flag(model):
    with pytest.raises(LaunchError, match="contradicts --env SGLANG_AMPERE_DECODE_BACKEND=tilelang"):
        plan_for(model, "--nsa-decode-backend", "torch", "--env", f"{DECODE}=tilelang")


def test_backend_value_checked_against_envvars(model):
    with pytest.raises(LaunchError, match="SGLANG_AMPERE_PREFILL_BACKEND='flash' is not one of torch, tilelang"):
        plan_for(model, "--env", f"{PREFILL}=flash")


# ----------------------------------------------------------------------------- precedence


def test_caller_env_beats_preset_and_env_flag_beats_caller(model):
    caller = {"SGLANG_OPT_USE_TOPK_V2": "1", "SGLANG_OPT_USE_TILELANG_INDEXER": "1", DECODE: "torch"}
    plan = plan_for(model, "--env", "SGLANG_OPT_USE_TILELANG_INDEXER=0", environ=caller)
    ch = changes(plan)
    assert "SGLANG_OPT_USE_TOPK_V2" not in ch and plan.env["SGLANG_OPT_USE_TOPK_V2"] == "1"   # caller > preset
    assert ch["SGLANG_OPT_USE_TILELANG_INDEXER"] == ("0", "--env")                            # --env > caller
    assert DECODE not in ch and plan.env[DECODE] == "torch"                                   # caller > preset
    assert any("keeping your SGLANG_OPT_USE_TOPK_V2=1 over preset sm86's 0" in n for n in map(str, plan.notes))


def test_env_flag_adds_new_variables_and_allows_empty_and_equals(model):
    plan = plan_for(model, "--env", "NCCL_P2P_DISABLE=1", "--env", "EMPTY=", "--env", "X=a=b")
    assert changes(plan)["NCCL_P2P_DISABLE"] == ("1", "--env")
    assert plan.env["EMPTY"] == "" and plan.env["X"] == "a=b"


def test_user_server_args_beat_preset_args(model):
    plan = plan_for(model, "--context-length", "8192", "--mem-fraction-static=0.8")
    assert plan.argv.count("--context-length") == 1 and plan.argv[plan.argv.index("--context-length") + 1] == "8192"
    assert "--mem-fraction-static=0.8" in plan.argv and "--mem-fraction-static" not in plan.argv
    text = format_spec(plan)
    assert "#   --context-length: your value kept over the preset's 65536" in text
    assert "#   --mem-fraction-static: your value kept over the preset's 0.85" in text
    assert "#   --context-length 65536" not in text
    assert plan.argv[3:] == ["--model-path", str(model), "--context-length", "8192", "--mem-fraction-static=0.8",
                             "--max-running-requests", "16", "--swa-full-tokens-ratio", "0.05",
                             "--chunked-prefill-size", "4096"]


def test_preset_file_replaces_builtin(model, tmp_path):
    f = tmp_path / "mine.toml"
    f.write_text('[preset]\narch = "sm86"\n[[env]]\nname = "SGLANG_OPT_USE_TOPK_V2"\nvalue = "0"\n'
                 'reason = "clusters"\n[[arg]]\nflag = "--disable-cuda-graph"\nreason = "debugging"\n')
    plan = plan_for(model, "--preset", str(f))
    assert [(c.name, c.new) for c in plan.changes] == [("SGLANG_OPT_USE_TOPK_V2", "0")]
    assert plan.argv == [PY, "-m", "sglang.launch_server", "--model-path", str(model), "--disable-cuda-graph"]


@pytest.mark.parametrize("text, msg", [
    ('[[env]]\nname = "A"\nvalue = 0\nreason = "r"\n', "'value' must be a string"),
    ('[[env]]\nname = "A"\nvalue = "0"\n', "'reason' must be a non-empty string"),
    ('[[arg]]\nflag = "context-length"\nvalue = "1"\nreason = "r"\n', "must look like --name"),
    ('[envs]\n', "unknown section"),
    ('[[env]\n', "not valid TOML"),
])
def test_bad_preset_files(model, tmp_path, text, msg):
    f = tmp_path / "bad.toml"
    f.write_text(text)
    with pytest.raises(LaunchError, match=msg):
        plan_for(model, "--preset", str(f))


def test_missing_preset_file(model, tmp_path):
    with pytest.raises(LaunchError, match="cannot read preset file"):
        plan_for(model, "--preset", str(tmp_path / "nope.toml"))


# ----------------------------------------------------------------------------- user errors


@pytest.mark.parametrize("bad", ["sm87", "ampere", "sm100"])
def test_unknown_gpu_lists_known(model, bad):
    with pytest.raises(LaunchError, match=r"unknown --gpu .*known: auto, sm80, sm86, sm89, sm90, sm120"):
        plan_for(model, gpu=bad)


def test_detected_arch_without_preset(model):
    with pytest.raises(LaunchError, match="sm100 .* has no preset"):
        build_spec(["--model-path", str(model)], environ={},
                   smi_output="0, NVIDIA B200, 10.0, 183359, GPU-aaaa\n")


@pytest.mark.parametrize("bad", ["NOEQUALS", "=1", "1ABC=2", "A B=1"])
def test_bad_env_flag(model, bad):
    with pytest.raises(LaunchError, match="is not KEY=VALUE"):
        plan_for(model, "--env", bad)


def test_no_gpu_auto_is_an_error(model):
    with pytest.raises(LaunchError, match=r"no GPU detected.*--gpu sm86 --dry-run"):
        build_spec(["--model-path", str(model)], environ={}, smi_output="")


def test_explicit_gpu_without_gpu_needs_dry_run(model):
    with pytest.raises(LaunchError, match="only works with --dry-run"):
        build_spec(["--gpu", "sm86", "--model-path", str(model)], environ={}, smi_output="")


def test_gpu_flag_differing_from_detected_is_noted(model):
    plan = plan_for(model, "--pp-size", "2", smi_output=smi("rtx4090_x2"))
    assert any("--gpu sm86 chosen, but this node has 2 x NVIDIA GeForce RTX 4090" in n
               for n in map(str, plan.notes))
    assert "launch.gpu-differs" in {n.code for n in plan.notes}, plan.notes


def test_missing_model_path_flag():
    with pytest.raises(LaunchError, match="pass --model-path DIR.*sglang-ampere convert"):
        build_spec(["--gpu", "sm86", "--dry-run"], environ={}, smi_output="")


def test_model_path_missing_dir(tmp_path):
    with pytest.raises(LaunchError, match="no such directory"):
        plan_for(tmp_path / "absent")


def test_model_path_without_config(tmp_path):
    with pytest.raises(LaunchError, match="no config.json there"):
        plan_for(tmp_path)


def test_model_path_unreadable_config(tmp_path):
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(LaunchError, match="unreadable JSON"):
        plan_for(tmp_path)


@pytest.mark.parametrize("method", [None, "gptq", "awq"])
def test_model_not_dsv4_int(tmp_path, method):
    d = make_model(tmp_path, method)
    with pytest.raises(LaunchError, match=r"quant_method is .*expected 'dsv4_int'.*sglang-ampere convert"):
        plan_for(d)


@pytest.mark.parametrize("arch", ["sm80", "sm86", "sm89"])
def test_native_fp8_without_mxfp4_expert_headers_refused_below_sm90(tmp_path, arch):
    """A native config alone is not enough below sm_90: the experts must be MXFP4 in the headers
    (the accepted cases, with the release's layout, are in test_launch_native.py)."""
    d = make_model(tmp_path, "fp8")
    with pytest.raises(LaunchError, match=r"native fp8 checkpoint whose routed experts are not found .*MXFP4"):
        plan_for(d, gpu=arch)


@pytest.mark.parametrize("arch", ["sm90", "sm120"])
def test_native_fp8_passes_through_on_sm90_plus(tmp_path, arch):
    d = make_model(tmp_path, "fp8")
    plan = plan_for(d, gpu=arch)
    assert any("native fp8 checkpoint" in n for n in map(str, plan.notes))
    assert plan.argv[3:5] == ["--model-path", str(d)]


def test_errors_print_and_exit_2(model):
    err = io.StringIO()
    rc = main(["--gpu", "sm86", "--dry-run", "--model-path", str(model), "--env", "oops"], environ={},
              stdout=io.StringIO(), stderr=err)
    assert rc == 2 and err.getvalue().startswith("sglang-ampere launch: error: --env 'oops' is not KEY=VALUE")


def test_model_alias_and_equals_form(model):
    plan = build_spec(["--gpu", "sm86", "--dry-run", f"--model={model}"], environ={}, smi_output="")
    assert plan.argv[3] == f"--model={model}"
    with pytest.raises(LaunchError, match="no such directory"):
        build_spec(["--gpu", "sm86", "--dry-run", "--model", str(model) + "-nope"], environ={}, smi_output="")
