"""`launch --dry-run` for every preset: the environment changes and argv, exactly."""

import shlex

import pytest
from helpers.launch import PY, smi

from sglang_ampere.launch.launcher import build_spec, format_spec, main

AMPERE_ENV = [
    ("SGLANG_OPT_DEEPGEMM_HC_PRENORM", "0"),
    ("SGLANG_OPT_USE_TOPK_V2", "0"),
    ("SGLANG_FP8_PAGED_MQA_LOGITS_TORCH", "1"),
    ("SGLANG_OPT_USE_TILELANG_INDEXER", "0"),
    ("SGLANG_OPT_FLASHMLA_SPARSE_PREFILL", "0"),
    ("SGLANG_OPT_FUSE_WQA_WKV", "0"),
    ("SGLANG_OPT_USE_TILELANG_MHC_PRE", "0"),
    ("SGLANG_OPT_USE_TILELANG_MHC_POST", "0"),
    ("SGLANG_OPT_FUSE_MHC_POST_PRE", "0"),
]
ARGS_24GB = ["--mem-fraction-static", "0.85", "--context-length", "65536", "--max-running-requests", "16",
             "--swa-full-tokens-ratio", "0.05", "--chunked-prefill-size", "4096"]
EXPECTED = {
    "sm86": (AMPERE_ENV, ARGS_24GB),
    "sm89": (AMPERE_ENV, ARGS_24GB),
    "sm80": (AMPERE_ENV, ["--mem-fraction-static", "0.88", "--context-length", "131072",
                          "--max-running-requests", "32", "--swa-full-tokens-ratio", "0.05",
                          "--chunked-prefill-size", "8192"]),
    "sm90": ([("SGLANG_OPT_FUSE_WQA_WKV", "0")], []),
    "sm120": ([("SGLANG_OPT_FUSE_WQA_WKV", "0")],
              ["--mem-fraction-static", "0.87", "--context-length", "131072", "--max-running-requests", "32"]),
}


@pytest.mark.parametrize("arch", sorted(EXPECTED))
def test_every_preset_env_and_argv_exactly(arch, model, tmp_path):
    env_expected, args_expected = EXPECTED[arch]
    caller = {"PATH": "/usr/bin", "SGLANG_JIT_CACHE_DIR": str(tmp_path / "jit")}
    plan = build_spec(["--gpu", arch, "--dry-run", "--model-path", str(model), "--pp-size", "12"],
                      environ=caller, smi_output="")
    assert [(c.name, c.new) for c in plan.changes] == env_expected
    assert all(c.old is None and c.source == f"preset {arch}" and c.reason for c in plan.changes)
    assert plan.argv == [PY, "-m", "sglang.launch_server", "--model-path", str(model), "--pp-size", "12",
                         *args_expected]
    assert plan.env == {**caller, **dict(env_expected)}

    # The printed command is what a shell would run: same assignments, same argv.
    text = format_spec(plan)
    command = [line for line in text.splitlines() if not line.startswith("#")]
    words = shlex.split("\n".join(command).replace("\\\n", " "))
    n = len(env_expected)
    assert words[:n] == [f"{k}={v}" for k, v in env_expected]
    assert words[n:] == plan.argv
    for name, _ in env_expected:        # every change is explained on its own line
        assert any(line.startswith(f"#   {name}=") and "[preset " in line for line in text.splitlines())


def test_dry_run_through_console_script(model, capsys, tmp_path, monkeypatch):
    from sglang_ampere.cli import main as cli_main

    monkeypatch.setenv("SGLANG_JIT_CACHE_DIR", str(tmp_path / "jit"))
    for k in [k for k, _ in AMPERE_ENV]:
        monkeypatch.delenv(k, raising=False)
    rc = cli_main(["launch", "--gpu", "sm86", "--dry-run", "--model-path", str(model), "--pp-size", "12",
                   "--", "--host", "0.0.0.0", "--port", "30000"])
    out = capsys.readouterr().out
    assert rc == 0
    last = out.strip().splitlines()[-1]
    assert shlex.split(last) == [PY, "-m", "sglang.launch_server", "--model-path", str(model), "--pp-size", "12",
                                 "--host", "0.0.0.0", "--port", "30000", *ARGS_24GB]
    assert "# note: SGLang's JIT cache" in out and "sglang-ampere warmup --gpu sm86" in out


def test_exec_with_detected_gpus(model, tmp_path, monkeypatch):
    from sglang_ampere.launch import launcher

    monkeypatch.setattr(launcher.gpus_mod, "run_nvidia_smi", lambda: smi("rtx3090_x12"))
    calls = []
    caller = {"PATH": "/usr/bin", "SGLANG_JIT_CACHE_DIR": str(tmp_path), "SGLANG_OPT_USE_TOPK_V2": "0"}
    import io
    err = io.StringIO()
    rc = main(["--model-path", str(model), "--pp-size", "12"], environ=caller,
              execvpe=lambda f, argv, env: calls.append((f, argv, env)), stdout=io.StringIO(), stderr=err)
    assert rc == 0 and len(calls) == 1
    f, argv, env = calls[0]
    assert f == PY and argv == [PY, "-m", "sglang.launch_server", "--model-path", str(model), "--pp-size", "12",
                                *ARGS_24GB]
    assert {k: env[k] for k, _ in AMPERE_ENV} == dict(AMPERE_ENV)
    assert env["PATH"] == "/usr/bin"
    assert "12 x NVIDIA GeForce RTX 3090 (sm86, 24 GiB)" in err.getvalue()


def test_dry_run_command_for_quickstart_is_runnable(model, capsys, tmp_path, monkeypatch):
    from sglang_ampere.cli import main as cli_main
    from sglang_ampere.launch import dry_run_command

    odd = tmp_path / "my model"
    odd.mkdir()
    (odd / "config.json").write_text((model / "config.json").read_text())
    cmd = dry_run_command(odd, extra_args=("--pp-size", "12"))
    assert cmd == f"sglang-ampere launch --gpu sm86 --dry-run --model-path '{odd}' --pp-size 12"
    words = shlex.split(cmd)
    monkeypatch.setenv("SGLANG_JIT_CACHE_DIR", str(tmp_path / "jit"))
    assert cli_main(words[1:]) == 0
    assert shlex.split(capsys.readouterr().out.strip().splitlines()[-1])[3:7] == \
        ["--model-path", str(odd), "--pp-size", "12"]
