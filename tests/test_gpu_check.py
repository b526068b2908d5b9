"""``sglang-ampere gpu-check`` on a CPU machine: exit 3 at once, ``--list``, the step runner's
budget / continue / skip rules with fake steps and a fake clock, real subprocess timeouts and log
tails, the logprob verdict, and the results.json / summary.md it writes."""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time

import pytest
from helpers.launch import make_model, smi

from sglang_ampere.commands import gpu_check as G

VAR = "SGLANG_AMPERE_TARGET"


def _args(*argv):
    p = argparse.ArgumentParser()
    G.add_arguments(p)
    return p.parse_args(list(argv))


class FakeClock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


# ----------------------------------------------------------------------------- command


def test_no_gpu_exits_3_at_once(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("SGLANG_")}
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if p and not os.path.exists(
        os.path.join(p, "nvidia-smi")))
    t0 = time.monotonic()
    p = subprocess.run([sys.executable, "-m", "sglang_ampere", "gpu-check", "--out", str(tmp_path / "o")],
                       capture_output=True, text=True, timeout=60, env=env)
    took = time.monotonic() - t0
    assert p.returncode == G.EXIT_NO_GPU and "no CUDA GPU on this machine" in p.stdout, (
        p.returncode, p.stdout, p.stderr)
    assert took <= 20 and not (tmp_path / "o").exists(), f"must stop at once without writing anything ({took:.1f} s)"


def test_list_prints_steps_and_budgets(capsys):
    assert G.run(_args("--list")) == 0, "--list exit"
    out = capsys.readouterr().out
    steps = G.all_steps()
    for s in steps:
        assert f" {s.name} " in out, f"{s.name} missing from --list:\n{out}"
    one = G.scaled(steps, None, 1)
    assert (abs(sum(one.values()) - G.DEFAULT_BUDGET_S) <= 1e-6
            and f"budget {G.DEFAULT_BUDGET_S:.0f} s on one GPU" in out), out
    assert "serve-pp2" not in one and "[2 GPUs]" in out, "PP=2 steps must be marked and take no budget on one GPU"
    capsys.readouterr()
    G.run(_args("--list", "--budget-s", "240"))
    assert "budget 240 s on one GPU, 240 s on two" in capsys.readouterr().out, "--budget-s must scale the shares"


def test_sets_ampere_target_on_hopper(tmp_path, monkeypatch):
    seen = {}

    def record(ctx, budget):
        seen.update(target=ctx.env.get(VAR), gpus=ctx.gpus)
        return "ok"

    monkeypatch.setattr(G, "all_steps", lambda: [G.Step("fake", 10, "records the environment", record)])
    lines = []

    class Out:
        def write(self, s):
            lines.append(s)

        def flush(self):
            pass

    env = {k: v for k, v in os.environ.items() if k != VAR}
    rc = G.run(_args("--out", str(tmp_path / "a")), environ=env, smi_output=smi("h100_80gb_hbm3_x8"), out=Out())
    text = "".join(lines)
    assert rc == 0 and seen == {"target": "ampere", "gpus": 8} and f"setting {VAR}=ampere" in text, (rc, seen, text)
    js = json.loads((tmp_path / "a" / "results.json").read_text())
    assert js["target"] == "ampere" and js["ok"] is True and "8 x NVIDIA H100 80GB HBM3" in js["device"], js
    seen.clear()
    G.run(_args("--out", str(tmp_path / "b")), environ={**env, VAR: "auto"}, smi_output=smi("h100_80gb_hbm3_x8"),
          out=Out())
    assert seen["target"] == "auto", "a user's own SGLANG_AMPERE_TARGET is kept"
    seen.clear()
    G.run(_args("--out", str(tmp_path / "c")), environ=env, smi_output=smi("rtx3090_x4"), out=Out())
    assert seen["target"] is None, "an Ampere card needs no target"


# ----------------------------------------------------------------------------- the runner


def test_runner_budget_continue_and_skip():
    clock = FakeClock()
    calls = []

    def ok(seconds, detail="fine"):
        def fn(ctx, budget):
            calls.append((fn.name, round(budget, 3)))
            clock.t += seconds
            return detail
        return fn

    def fail(ctx, budget):
        calls.append(("b", round(budget, 3)))
        clock.t += 1
        raise G.StepFailed("exit 1; log x", "line 1\nline 2")

    def crash(ctx, budget):
        calls.append(("e", round(budget, 3)))
        raise RuntimeError("bug in a step")

    steps = [G.Step("a", 10, "", ok(2)), G.Step("b", 10, "", fail), G.Step("c", 10, "", ok(1), needs=("b",)),
             G.Step("d", 10, "", ok(70), needs=("a",)), G.Step("e", 10, "", crash),
             G.Step("f", 10, "", ok(1)), G.Step("two", 10, "", ok(1), min_gpus=2),
             G.Step("g", 40, "", ok(1), always=True)]
    for s in steps:
        if s.fn is not None:
            s.fn.name = s.name
    ctx = G.Context(out=None, gpus=1)
    results = {r.name: r for r in G.run_steps(steps, ctx, 100.0, clock=clock)}
    verdicts = {n: r.verdict for n, r in results.items()}
    want = {"a": "pass", "b": "fail", "c": "skip", "d": "pass", "e": "fail", "f": "pass", "two": "skip", "g": "pass"}
    assert verdicts == want, verdicts
    # budgets: the 7 one-GPU steps' shares of 100 s (10 each, g 40), each capped by what is left:
    # d overran to t = 73, so e and f still get their 10 s (27 s left) and g the 26 s after f
    got = dict(calls)
    assert (got == {"a": 10.0, "b": 10.0, "d": 10.0, "e": 10.0, "f": 10.0, "g": 26.0}
            and results["g"].budget_s == 40.0), (calls, results["g"])
    assert results["b"].log_tail == "line 1\nline 2" and "exit 1" in results["b"].detail, results["b"]
    assert results["c"].detail == "needs b fail" and results["two"].detail == "needs 2 GPUs, 1 visible", (
        results["c"].detail, results["two"].detail)
    assert "RuntimeError: bug in a step" in results["e"].detail and "Traceback" in results["e"].log_tail, results["e"]
    assert not G.overall_ok(list(results.values())), "failures make the run fail"


def test_runner_stops_when_the_budget_is_spent_but_cleans_up():
    clock = FakeClock()

    def take(seconds):
        def fn(ctx, budget):
            clock.t += seconds
            return f"took {seconds}"
        return fn

    steps = [G.Step("slow", 10, "", take(96)), G.Step("next", 10, "", take(1)),
             G.Step("stop", 10, "", take(1), always=True)]
    results = G.run_steps(steps, G.Context(out=None), 100.0, clock=clock)
    got = [(r.name, r.verdict) for r in results]
    assert got == [("slow", "pass"), ("next", "skip"), ("stop", "pass")], got
    assert results[1].detail == "time budget spent (4 s left of 100 s)", results[1].detail
    assert not G.overall_ok(results), "a step the budget did not reach is not a pass"
    only_gpu_skips = [G.StepResult("a", "pass", 1, 1), G.StepResult("b", "skip", 0, 0, "needs 2 GPUs, 1 visible")]
    assert G.overall_ok(only_gpu_skips), "skips for a missing second GPU do not fail the run"


def test_run_logged_timeout_and_failure_tail(tmp_path):
    ctx = G.Context(out=tmp_path)
    t0 = time.monotonic()
    with pytest.raises(G.StepTimeout) as exc:
        G.run_logged(ctx, "sleepy", [sys.executable, "-c", "import time; print('started', flush=True); "
                                     "time.sleep(60)"], timeout=2)
    assert time.monotonic() - t0 <= 15 and "started" in exc.value.log_tail, (time.monotonic() - t0, exc.value.log_tail)
    with pytest.raises(G.StepFailed) as exc:
        G.run_logged(ctx, "bad", [sys.executable, "-c", "import sys\nfor i in range(100): print('line', i)\n"
                                  "sys.exit(4)"], timeout=30)
    tail = exc.value.log_tail.splitlines()
    assert "exit 4" in exc.value.detail and tail[-1] == "line 99" and len(tail) == G.LOG_TAIL_LINES, (
        exc.value.detail, tail[-3:], len(tail))
    assert G.run_logged(ctx, "good", [sys.executable, "-c", "print('hi')"], timeout=30).splitlines()[-1] == "hi", (
        "output of a passing command")


def test_logprob_verdict():
    ref = [-3.0, -5.0, -1.0, -7.0]
    mean, worst, bound = G.compare_logprobs([-3.01, -4.98, -1.0, -7.03], ref, floor=0.01)
    assert math.isclose(mean, 0.015) and math.isclose(worst, 0.03) and bound == 0.04, (mean, worst, bound)
    with pytest.raises(G.StepFailed, match="diverge"):
        G.compare_logprobs([-3.5, -5.0, -1.0, -7.0], ref, floor=0.01)     # mean 0.125 > 0.04
    with pytest.raises(G.StepFailed, match="diverge"):
        G.compare_logprobs([float("nan"), -5.0, -1.0, -7.0], ref, floor=0.01)
    G.compare_logprobs([-3.015, -5.0, -1.0, -7.0], ref, floor=0.0)         # the 0.02 nats floor
    with pytest.raises(G.StepFailed, match="expected 4"):
        G.compare_logprobs([-3.0], ref, floor=0.01)


def test_results_and_summary(tmp_path):
    meta = {"device": "1 x NVIDIA H200 (sm90, 139 GiB)", "versions": {"sglang": "0.5.23", "torch": "2.14.1"},
            "target": "ampere", "budget_s": 480.0}
    results = [G.StepResult("doctor", "pass", 3.2, 20, "all checks passed"),
               G.StepResult("selftest", "fail", 40.0, 90, "exit 1; log l", "FAIL sparse_mla | x\n3 passed, 1 failed"),
               G.StepResult("serve-pp2", "skip", 0.0, 0.0, "needs 2 GPUs, 1 visible")]
    js, md = G.write_results(tmp_path / "out", meta, results)
    data = json.loads(js.read_text())
    assert data["ok"] is False and [s["verdict"] for s in data["steps"]] == ["pass", "fail", "skip"], data
    assert data["steps"][1]["log_tail"] == "FAIL sparse_mla | x\n3 passed, 1 failed" and data["target"] == "ampere", (
        data["steps"][1])
    text = md.read_text()
    for want in ("- verdict: **FAIL**", "- device: 1 x NVIDIA H200 (sm90, 139 GiB)",
                 "- versions: sglang 0.5.23, torch 2.14.1", "- SGLANG_AMPERE_TARGET: ampere",
                 "| doctor | pass | 3.2 | 20 | all checks passed |",
                 "| selftest | fail | 40.0 | 90 | exit 1; log l |",
                 "| serve-pp2 | skip | 0.0 | 0 | needs 2 GPUs, 1 visible |",
                 "## selftest: fail", "3 passed, 1 failed"):
        assert want in text, f"{want!r} not in:\n{text}"


def test_prompt_for_bench_on_the_synthetic_tokenizer(tmp_path):
    """gpu-check's bench step builds exact-length prompts with the checkpoint's own tokenizer."""
    from transformers import AutoTokenizer

    from sglang_ampere import synth
    from sglang_ampere.commands import bench

    out = synth.write_checkpoint(tmp_path / "s", synth.SynthSpec(), seed=0, shards=1, progress=False)
    tok = AutoTokenizer.from_pretrained(out)
    import random

    rng = random.Random(0)
    for n in (256, 1000):
        assert len(tok.encode(bench.exact_prompt(tok, n, rng))) == n, n
    assert max(G._prompt_ids()) < len(tok) and len(G._prompt_ids()) == G.PROMPT_TOKENS, (
        "the logprob prompt must use ids the tokenizer has")


@pytest.mark.parametrize("pp", [1, 2])
def test_serve_command_is_accepted_by_launch(tmp_path, pp):
    """The serve steps' launch arguments, through the launcher's own checks (SGLang's parser, the
    topology on two recorded H100s, the Ampere preset under the target gpu-check sets)."""
    from sglang_ampere.launch.launcher import build_spec

    model = make_model(tmp_path)
    plan = build_spec(["--dry-run", *G.launch_args(model, pp, 30000)], environ={VAR: "ampere"},
                      smi_output=smi("h100_80gb_hbm3_x8"), python="python3")
    assert plan.arch == "sm80" and plan.card_arch == "sm90", (plan.arch, plan.card_arch)
    argv = plan.argv
    assert argv[argv.index("--pp-size") + 1] == str(pp) and argv[argv.index("--port") + 1] == "30000", argv


# ----------------------------------------------------------------------------- the native checkpoint steps


def test_native_steps_come_after_the_dsv4_int_server_and_need_what_they_read():
    names = [s.name for s in G.all_steps()]
    native = ["reference-native", "serve-native", "logprobs-native", "stop-native"]
    at = names.index("reference-native")
    # one GPU: the dsv4_int server is gone before the native one starts
    assert names[at:at + 4] == native and names.index("stop-pp1") < at < names.index("serve-pp2"), names
    steps = {s.name: s for s in G.all_steps()}
    assert (steps["serve-native"].needs == ("checkpoint",)
            and set(steps["logprobs-native"].needs) == {"serve-native", "reference-native"}
            and steps["stop-native"].always), {n: (steps[n].needs, steps[n].always) for n in native}
    assert all(steps[n].min_gpus == 1 for n in native), "the native steps run on one GPU"


def test_native_reference_and_logprobs_use_the_native_checkpoint(tmp_path, monkeypatch):
    """The native steps read and write their own state: eval runs on the native checkpoint, and the
    server is judged against the native reference, not the dsv4_int one."""
    calls = []
    monkeypatch.setattr(G, "run_logged", lambda ctx, name, cmd, timeout: calls.append((name, cmd)) or "")
    native_ref = [-1.0 - 0.01 * i for i in range(G.PROMPT_TOKENS - 1)]
    monkeypatch.setattr(G, "_logprobs_from_logits",
                        lambda path, ids: [x + (0.005 if "bfloat16" in path.name else 0.0) for x in native_ref])
    (tmp_path / "ckpt").mkdir()
    ctx = G.Context(out=tmp_path, state={"model": tmp_path / "int", "model-native": tmp_path / "native",
                                          "ref": [-9.0] * (G.PROMPT_TOKENS - 1), "floor": 0.01})
    G.make_reference("-native")(ctx, 30.0)
    evals = [cmd for name, cmd in calls if name == "reference-native"]
    assert len(evals) == 2 and all(cmd[cmd.index("eval") + 1] == str(tmp_path / "native") for cmd in evals), calls
    assert ctx.state["ref-native"] == native_ref and math.isclose(ctx.state["floor-native"], 0.005), ctx.state
    assert ctx.state["ref"] == [-9.0] * (G.PROMPT_TOKENS - 1), "the dsv4_int reference must stay as it was"

    class Reply:
        def __init__(self, logprobs):
            self.body = json.dumps({"meta_info": {"input_token_logprobs": [[None]] + [[x] for x in logprobs]}})

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def read(self):
            return self.body.encode()

    sent = []

    def urlopen(req, timeout):
        sent.append(req.full_url)
        return Reply(served)

    monkeypatch.setattr(G.urllib.request, "urlopen", urlopen)
    ctx.state["urlnative"] = "http://127.0.0.1:1"
    served = [x + 0.003 for x in native_ref]
    assert "mean |d logprob| 0.0030" in G.make_logprobs("native")(ctx, 10.0), (
        "the native server matches its own reference")
    served = [x + 0.5 for x in native_ref]
    with pytest.raises(G.StepFailed, match="diverge"):
        G.make_logprobs("native")(ctx, 10.0)
    assert sent == ["http://127.0.0.1:1/generate"] * 2, sent


def test_native_serve_command_is_accepted_by_launch(synth_ckpt):
    """serve-native's launch arguments through the launcher's own checks, with the Ampere target
    gpu-check sets on a Hopper card: the [native] table is added."""
    from sglang_ampere.launch.launcher import build_spec

    plan = build_spec(["--dry-run", *G.launch_args(synth_ckpt, 1, 30000)], environ={VAR: "ampere"},
                      smi_output=smi("h100_80gb_hbm3_x8"), python="python3")
    assert plan.native_path and "--moe-runner-backend" in plan.argv, plan.argv
    assert plan.argv[plan.argv.index("--moe-runner-backend") + 1] == "marlin", plan.argv
