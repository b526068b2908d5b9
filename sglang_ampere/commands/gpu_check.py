"""``sglang-ampere gpu-check``: everything that needs a GPU, in one command, within a time budget.

On a machine with an NVIDIA GPU it runs, in order (``--list`` prints them with their budgets):

1. ``doctor``        install, plugin, patches, toolchain, preset (no kernel runs yet);
2. ``selftest``      every kernel against its torch reference on DeepSeek-V4 shapes;
3. ``tests-gpu``     the ``tests/gpu/`` suite (from a source checkout; skipped from a wheel);
4. ``checkpoint``    ``synth`` + ``convert``: a dsv4_int checkpoint with the release's hidden size,
                     expert and attention shapes (4 layers: dense, dense, c4, c128; 8 experts);
                     kept in ``--out``, so a second run reuses it;
5. ``reference``     the plain-torch reference forward of that checkpoint over a fixed token
                     sequence, in float32 (the expected prompt logprobs) and in bfloat16 (how far
                     an honest bf16 implementation of the same math lands from it);
6. ``serve-pp1``     the real SGLang server through ``sglang-ampere launch`` (PP=1), until ready;
7. ``requests-pp1``  chat, completion and streamed completion with the ``openai`` client;
8. ``logprobs-pp1``  the server's prompt logprobs (``/generate``, ``logprob_start_len=0``) against
                     the reference: fails on divergence (threshold below);
9. ``bench-pp1``     a short ``sglang-ampere bench`` (256 and 1000 tokens x 1, 2 streams);
10. ``stop-pp1``;
11. the native FP8/FP4 checkpoint, served without conversion: ``reference-native`` (the same
    reference forward on the synthetic native checkpoint the ``checkpoint`` step wrote, at the
    release's hidden and expert shapes), ``serve-native`` (``launch`` adds the preset's
    ``[native]`` table: routed experts on SGLang's Marlin MXFP4 MoE, dense FP8 on FP8 Marlin
    W8A16), ``logprobs-native`` (the same verdict as for dsv4_int), ``stop-native``;
12. ``serve-pp2`` / ``requests-pp2`` / ``logprobs-pp2`` / ``stop-pp2`` with ``--pp-size 2`` when
    two GPUs are visible.

Each step has a share of the budget (default 645 s on one GPU; ``--budget-s`` scales the shares),
and gets at most what is left. A failing step is reported with the tail of its log and the run
continues; steps that need a failed one (e.g. requests without a server) are skipped, saying why.
``results.json`` and ``summary.md`` (device, versions, each step's verdict and time) go to
``--out`` (default ``./gpu-check``), logs to ``--out/logs``.

On sm_90 and newer, ``SGLANG_AMPERE_TARGET=ampere`` is set for every step unless already set, so
the card checks the sm_80/sm_86 path (say ``SGLANG_AMPERE_TARGET=auto`` to check SGLang's own).

Logprob threshold: with ``d(x) = mean over prompt positions of |logprob_x - logprob_float32|``,
the server fails when ``d(server) > max(4 * d(reference bf16), 0.02)`` nats. The reference in
bf16 is the noise floor of a correct bf16 implementation (same weights, same math, bf16
rounding); a correct server differs from float32 by about that much (its kernels also run bf16
with fp32 accumulation, in another order), while the faults this catches (a wrong weight layout,
swapped nibbles, a wrong scale, a missing attention term) move logprobs by O(1) nats. The factor
4 leaves room for the server's different reduction orders; the 0.02 floor keeps a very quiet
reference from making the bound unreachably tight. Measured on CPU for the 16-expert variant of
this checkpoint (64 tokens): bf16 vs float32 mean 0.073 nats (worst position 0.54), so the bound
is 0.29; the float32 logprobs compared at shuffled positions (a gross fault) differ by 1.12.

Exit status: 0 every step passed or was skipped for want of a second GPU; 1 a step failed;
3 no CUDA GPU (nothing was run).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import subprocess
import sys
import time
import traceback
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from .. import __version__, envvars, server_probe
from ..server_probe import LOGPROB_FACTOR, LOGPROB_FLOOR  # noqa: F401  (the rule gpu-check reports)

_kill_group = server_probe.kill_group
_tail = server_probe.tail
_free_port = server_probe.free_port
_logprobs_from_logits = server_probe.logprobs_from_logits

EXIT_NO_GPU = 3
DEFAULT_BUDGET_S = 645.0           # the one-GPU steps' shares (the native steps add 165 s to 480)
MIN_STEP_S = 5.0
PASS, FAIL, TIMEOUT, SKIP = "pass", "fail", "timeout", "skip"
LOG_TAIL_LINES = server_probe.LOG_TAIL_LINES
#: Synthetic checkpoint: the release's hidden size and expert / attention shapes, few layers.
#: 8 experts (topk 6): the expert count is not a shape, and synth's time is mostly expert bytes
#: (about 1.4 GB and 4 min with 16 experts on a busy 2-core host; half that with 8).
SYNTH_FLAGS = ("--layers", "4", "--experts", "8", "--topk", "6", "--hidden", "4096", "--moe-inter", "2048",
               "--heads", "64", "--q-lora-rank", "1024", "--o-groups", "8", "--o-lora-rank", "1024",
               "--index-heads", "64", "--hash-layers", "2", "--mtp", "0")
PROMPT_TOKENS = 64


class StepFailed(Exception):
    def __init__(self, detail: str, log_tail: str = ""):
        super().__init__(detail)
        self.detail, self.log_tail = detail, log_tail


class StepTimeout(StepFailed):
    pass


@dataclass
class Step:
    name: str
    budget_s: float               # share of DEFAULT_BUDGET_S
    what: str                     # what a pass proves
    fn: Callable[[Context, float], str] | None = None
    needs: tuple[str, ...] = ()
    min_gpus: int = 1
    always: bool = False          # runs even when the budget is spent (clean-up)


@dataclass
class StepResult:
    name: str
    verdict: str
    seconds: float
    budget_s: float
    detail: str = ""
    log_tail: str = ""


@dataclass
class Context:
    out: Path
    gpus: int = 1
    env: dict = field(default_factory=lambda: dict(os.environ))
    state: dict = field(default_factory=dict)     # what steps hand to later steps


# ----------------------------------------------------------------------------- the runner


def default_budget(steps: list[Step], gpus: int) -> float:
    """:data:`DEFAULT_BUDGET_S` on one GPU; with two, the PP=2 steps' shares on top."""
    one = sum(s.budget_s for s in steps if s.min_gpus <= 1) or 1.0
    return DEFAULT_BUDGET_S * sum(s.budget_s for s in steps if s.min_gpus <= gpus) / one


def scaled(steps: list[Step], budget_s: float | None, gpus: int) -> dict[str, float]:
    """Each applicable step's budget, the shares scaled so they sum to ``budget_s`` (None: the default)."""
    live = [s for s in steps if s.min_gpus <= gpus]
    total = sum(s.budget_s for s in live) or 1.0
    budget_s = default_budget(steps, gpus) if budget_s is None else budget_s
    return {s.name: s.budget_s * budget_s / total for s in live}


def run_steps(steps: list[Step], ctx: Context, budget_s: float | None, clock: Callable[[], float] = time.monotonic,
              report: Callable[[StepResult], None] | None = None) -> list[StepResult]:
    """Run the steps in order within ``budget_s`` (see the module docstring for the rules)."""
    budgets = scaled(steps, budget_s, ctx.gpus)
    budget_s = sum(budgets.values())
    start = clock()
    done: dict[str, StepResult] = {}
    results = []
    for step in steps:
        t0 = clock()
        if step.min_gpus > ctx.gpus:
            r = StepResult(step.name, SKIP, 0.0, 0.0, f"needs {step.min_gpus} GPUs, {ctx.gpus} visible")
        elif (bad := [n for n in step.needs if n not in done or done[n].verdict != PASS]):
            why = ", ".join(f"{n} {done[n].verdict if n in done else 'not run'}" for n in bad)
            r = StepResult(step.name, SKIP, 0.0, budgets[step.name], f"needs {why}")
        else:
            left = budget_s - (t0 - start)
            allowed = min(budgets[step.name], left)
            if allowed < MIN_STEP_S and not step.always:
                r = StepResult(step.name, SKIP, 0.0, budgets[step.name],
                               f"time budget spent ({max(left, 0):.0f} s left of {budget_s:.0f} s)")
            else:
                allowed = max(allowed, MIN_STEP_S)
                try:
                    detail = step.fn(ctx, allowed) if step.fn else ""
                    r = StepResult(step.name, PASS, clock() - t0, budgets[step.name], detail or "")
                except StepTimeout as e:
                    r = StepResult(step.name, TIMEOUT, clock() - t0, budgets[step.name], e.detail, e.log_tail)
                except StepFailed as e:
                    r = StepResult(step.name, FAIL, clock() - t0, budgets[step.name], e.detail, e.log_tail)
                except Exception as e:  # a bug in a step is that step's failure, not the run's end
                    r = StepResult(step.name, FAIL, clock() - t0, budgets[step.name],
                                   f"{type(e).__name__}: {e}", _tail(traceback.format_exc()))
        done[step.name] = r
        results.append(r)
        if report is not None:
            report(r)
    return results


def overall_ok(results: list[StepResult]) -> bool:
    """No failure or timeout, and nothing skipped except for a missing second GPU or a failed
    prerequisite (itself a failure); a step the budget did not reach is not a pass."""
    return not any(r.verdict in (FAIL, TIMEOUT) or (r.verdict == SKIP and not r.detail.startswith("needs "))
                   for r in results)


# ----------------------------------------------------------------------------- rendering


def render_list(steps: list[Step], budget_s: float | None) -> str:
    one, two = scaled(steps, budget_s, 1), scaled(steps, budget_s, 2)
    lines = [f"sglang-ampere gpu-check: budget {sum(one.values()):.0f} s on one GPU, {sum(two.values()):.0f} s on "
             "two (--budget-s), shared out by step; steps marked [2 GPUs] run only with two GPUs visible",
             f"    {'step':{max(len(s.name) for s in steps)}}  1 GPU  2 GPUs  what a pass proves"]
    width = max(len(s.name) for s in steps)
    for i, s in enumerate(steps, 1):
        b1 = f"{one[s.name]:4.0f} s" if s.name in one else "     -"
        extra = " [2 GPUs]" if s.min_gpus > 1 else ""
        lines.append(f"{i:2}. {s.name:{width}}  {b1} {two[s.name]:5.0f} s  {s.what}{extra}")
    return "\n".join(lines) + "\n"


def render_summary(meta: dict, results: list[StepResult]) -> str:
    ok = overall_ok(results)
    lines = ["# sglang-ampere gpu-check", "",
             f"- verdict: **{'PASS' if ok else 'FAIL'}**",
             f"- device: {meta.get('device', '?')}",
             "- versions: " + ", ".join(f"{k} {v}" for k, v in meta.get("versions", {}).items()),
             f"- SGLANG_AMPERE_TARGET: {meta.get('target', 'auto')}",
             f"- budget: {meta.get('budget_s', 0):.0f} s, used {sum(r.seconds for r in results):.0f} s", "",
             "| step | verdict | time (s) | budget (s) | detail |", "|---|---|---|---|---|"]
    for r in results:
        detail = r.detail.replace("|", "/").replace("\n", " ")
        lines.append(f"| {r.name} | {r.verdict} | {r.seconds:.1f} | {r.budget_s:.0f} | {detail} |")
    for r in results:
        if r.verdict in (FAIL, TIMEOUT) and r.log_tail:
            lines += ["", f"## {r.name}: {r.verdict}", "", "```", r.log_tail.rstrip(), "```"]
    return "\n".join(lines) + "\n"


def write_results(out: Path, meta: dict, results: list[StepResult]) -> tuple[Path, Path]:
    out.mkdir(parents=True, exist_ok=True)
    js = out / "results.json"
    js.write_text(json.dumps({**meta, "ok": overall_ok(results), "steps": [asdict(r) for r in results]}, indent=2))
    md = out / "summary.md"
    md.write_text(render_summary(meta, results))
    return js, md


# ----------------------------------------------------------------------------- step helpers


def _log_path(ctx: Context, name: str) -> Path:
    d = ctx.out / "logs"
    d.mkdir(parents=True, exist_ok=True)
    return d / f"{name}.log"


def run_logged(ctx: Context, name: str, cmd: list[str], timeout: float, ok_codes=(0,)) -> str:
    """Run ``cmd`` with its output in ``logs/<name>.log``; StepFailed/StepTimeout with the log's tail."""
    log = _log_path(ctx, name)
    with open(log, "ab") as f:
        f.write(f"$ {' '.join(cmd)}\n".encode())
        f.flush()
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=ctx.env, start_new_session=True)
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            raise StepTimeout(f"over its {timeout:.0f} s budget (killed); log {log}",
                              _tail(log.read_text(errors="replace"))) from None
    text = log.read_text(errors="replace")
    if rc not in ok_codes:
        raise StepFailed(f"exit {rc}; log {log}", _tail(text))
    return text


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "sglang_ampere", *args]


def _prompt_ids(n: int = PROMPT_TOKENS, seed: int = 0) -> list[int]:
    """Random text for the logprob check: synth's byte-token ids (no BOS/EOS/PAD, no chat tokens)."""
    from ..synth import BYTE_IDS

    rng = random.Random(seed)
    return [rng.randrange(BYTE_IDS.start, BYTE_IDS.stop) for _ in range(n)]


# ----------------------------------------------------------------------------- the steps


def step_doctor(ctx: Context, budget: float) -> str:
    text = run_logged(ctx, "doctor", _cli("doctor"), budget)
    return _tail(text, 1)


def step_selftest(ctx: Context, budget: float) -> str:
    text = run_logged(ctx, "selftest", _cli("selftest"), budget)
    return _tail(text, 1)


def step_tests_gpu(ctx: Context, budget: float) -> str:
    suite = Path(__file__).resolve().parents[1] / "tests" / "gpu"
    if not suite.is_dir():
        return f"no tests/gpu next to the package ({suite}); run from a source checkout to include it"
    text = run_logged(ctx, "tests-gpu", [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                                         str(suite)], budget)
    return _tail(text, 1)


def step_checkpoint(ctx: Context, budget: float) -> str:
    native, dst = ctx.out / "ckpt" / "native", ctx.out / "ckpt" / "dsv4_int"
    t0 = time.monotonic()
    if not (native / "config.json").exists():
        run_logged(ctx, "checkpoint", _cli("synth", str(native), "--quiet", "--overwrite", *SYNTH_FLAGS), budget)
    left = budget - (time.monotonic() - t0)
    if left < 1:
        raise StepTimeout("synth used the whole budget")
    run_logged(ctx, "checkpoint", _cli("convert", str(native), str(dst), "--expert-scale", "absmax", "--workers",
                                       str(min(4, os.cpu_count() or 1))), left)
    ctx.state["model"] = dst
    ctx.state["model-native"] = native          # the synthetic release itself, for the native steps
    return f"{dst} ({sum(f.stat().st_size for f in dst.glob('*.safetensors')) / 2**30:.2f} GiB)"


def make_reference(tag: str = "") -> Callable[[Context, float], str]:
    """The reference forward of ``state["model" + tag]`` ("" the dsv4_int checkpoint, "-native" the
    native one): float32 logprobs into ``state["ref" + tag]``, its bf16 distance into ``state["floor" + tag]``."""
    def step(ctx: Context, budget: float) -> str:
        ids = _prompt_ids()
        tokens = ctx.out / "ckpt" / "prompt_ids.json"
        tokens.write_text(json.dumps(ids))
        ref = {}
        t0 = time.monotonic()
        for dtype in ("float32", "bfloat16"):
            dump = ctx.out / "ckpt" / f"ref{tag}_{dtype}.safetensors"
            left = budget - (time.monotonic() - t0)
            run_logged(ctx, f"reference{tag}", _cli("eval", str(ctx.state["model" + tag]), "--tokens", str(tokens),
                                                    "--dtype", dtype, "--device", "cuda", "--dump-logits", str(dump),
                                                    "--quiet"), max(left, 1.0))
            ref[dtype] = _logprobs_from_logits(dump, ids)
        floor = sum(abs(a - b) for a, b in zip(ref["bfloat16"], ref["float32"])) / len(ids[1:])
        ctx.state.update({"ids": ids, "ref" + tag: ref["float32"], "floor" + tag: floor})
        return f"{len(ids)} tokens; reference bf16 vs float32: mean |d logprob| {floor:.4f} nats"
    return step


step_reference = make_reference()


def _wait_ready(url: str, proc: subprocess.Popen, deadline: float, log: Path) -> None:
    try:
        server_probe.wait_ready(url, proc, deadline, log)
    except server_probe.ServerNotReady as e:
        raise (StepTimeout if e.timed_out else StepFailed)(e.what, e.tail) from None


def launch_args(model: Path | str, pp: int, port: int) -> list[str]:
    """The ``sglang-ampere launch`` arguments of the serve steps (tests check them with ``--dry-run``)."""
    return ["--model-path", str(model), "--pp-size", str(pp), "--", "--host", "127.0.0.1", "--port", str(port)]


def make_serve(pp: int, native: bool = False) -> Callable[[Context, float], str]:
    """Start the server on the dsv4_int checkpoint at ``pp``, or (``native``) on the native one at pp 1;
    it is ``state["server<key>"]`` / ``state["url<key>"]`` with key ``pp`` or ``native``."""
    key = "native" if native else pp

    def step(ctx: Context, budget: float) -> str:
        port = _free_port()
        name = "serve-native" if native else f"serve-pp{pp}"
        log = _log_path(ctx, name)
        cmd = _cli("launch", *launch_args(ctx.state["model-native" if native else "model"], pp, port))
        f = open(log, "ab")
        f.write(f"$ {' '.join(cmd)}\n".encode())
        f.flush()
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=ctx.env, start_new_session=True)
        ctx.state[f"server{key}"] = (proc, f)
        url = f"http://127.0.0.1:{port}"
        _wait_ready(url, proc, time.monotonic() + budget, log)
        ctx.state[f"url{key}"] = url
        return f"ready at {url} (PP={pp}{', native checkpoint' if native else ''})"
    return step


def make_stop(key: int | str) -> Callable[[Context, float], str]:
    def step(ctx: Context, budget: float) -> str:
        handle = ctx.state.pop(f"server{key}", None)
        if handle is None:
            return "no server was started"
        proc, f = handle
        _kill_group(proc)
        f.close()
        return f"stopped (exit {proc.returncode})"
    return step


def make_requests(pp: int) -> Callable[[Context, float], str]:
    def step(ctx: Context, budget: float) -> str:
        import openai

        client = openai.OpenAI(base_url=ctx.state[f"url{pp}"] + "/v1", api_key="EMPTY", timeout=budget,
                               max_retries=0)
        model = client.models.list().data[0].id
        chat = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "Hello"}],
                                              max_tokens=16, temperature=0)
        text = chat.choices[0].message.content or ""
        comp = client.completions.create(model=model, prompt="The capital of France is", max_tokens=16,
                                         temperature=0)
        chunks = [c.choices[0].text for c in client.completions.create(
            model=model, prompt="Once upon a time", max_tokens=16, temperature=0, stream=True) if c.choices]
        problems = []
        if chat.usage is None or chat.usage.completion_tokens < 1:
            problems.append(f"chat generated no token ({chat.usage})")
        if comp.usage is None or comp.usage.completion_tokens < 1:
            problems.append(f"completion generated no token ({comp.usage})")
        if sum(1 for c in chunks if c) < 2:
            problems.append(f"stream gave {len(chunks)} chunk(s)")
        if problems:
            raise StepFailed("; ".join(problems))
        return (f"chat {chat.usage.completion_tokens} tok ({text[:30]!r}), completion {comp.usage.completion_tokens}"
                f" tok, stream {len(chunks)} chunks")
    return step


def compare_logprobs(server: list[float], ref: list[float], floor: float) -> tuple[float, float, float]:
    """(mean |d|, max |d|, threshold); raises StepFailed past the threshold (server_probe's rule)."""
    try:
        return server_probe.judge_logprobs(server, ref, floor)
    except server_probe.LogprobMismatch as e:
        raise StepFailed(f"prompt {e}") from None


def make_logprobs(key: int | str) -> Callable[[Context, float], str]:
    """The server ``state["url<key>"]`` against its reference (``key`` "native": the native one's)."""
    tag = "-native" if key == "native" else ""

    def step(ctx: Context, budget: float) -> str:
        ids = ctx.state["ids"]
        body = json.dumps({"input_ids": ids, "sampling_params": {"max_new_tokens": 1, "temperature": 0},
                           "return_logprob": True, "logprob_start_len": 0}).encode()
        req = urllib.request.Request(ctx.state[f"url{key}"] + "/generate", data=body,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=budget) as r:
            meta = json.loads(r.read())["meta_info"]
        got = [float(e[0]) for e in meta["input_token_logprobs"][1:]]
        mean, worst, bound = compare_logprobs(got, ctx.state["ref" + tag], ctx.state["floor" + tag])
        return f"mean |d logprob| {mean:.4f} nats (bound {bound:.4f}), worst {worst:.3f}"
    return step


def step_bench(ctx: Context, budget: float) -> str:
    from . import bench

    report = bench.run_bench(ctx.state["url1"], [256, 1000], [1, 2], output_len=32,
                             stall_timeout=min(60.0, budget), progress=False)
    (ctx.out / "bench.md").write_text(bench.render_markdown(report))
    (ctx.out / "bench.json").write_text(json.dumps(report.to_json(), indent=2))
    if not report.ok:
        raise StepFailed("a bench row did not pass", bench.render_markdown(report))
    return "; ".join(f"{r.context}x{r.concurrency}: TTFT {r.ttft_ms:.0f} ms, {r.decode_tps:.1f} tok/s/stream"
                     for r in report.rows)


def all_steps() -> list[Step]:
    steps = [
        Step("doctor", 20, "install, plugin, patches, toolchain and preset are right", step_doctor),
        Step("selftest", 90, "every kernel matches its torch reference on DeepSeek-V4 shapes", step_selftest),
        Step("tests-gpu", 60, "the tests/gpu suite passes on this card", step_tests_gpu),
        Step("checkpoint", 70, "synth + convert: a real-shape 4-layer dsv4_int checkpoint", step_checkpoint),
        Step("reference", 30, "the reference forward's prompt logprobs (float32) and its bf16 noise floor",
             step_reference, needs=("checkpoint",)),
    ]
    for pp in (1, 2):
        gpus = pp
        steps += [
            Step(f"serve-pp{pp}", 130 if pp == 1 else 110, f"SGLang's server starts through launch (PP={pp})",
                 make_serve(pp), needs=("checkpoint",), min_gpus=gpus),
            Step(f"requests-pp{pp}", 15, "chat, completion and streamed requests answer (openai client)",
                 make_requests(pp), needs=(f"serve-pp{pp}",), min_gpus=gpus),
            Step(f"logprobs-pp{pp}", 10, "the server's prompt logprobs match the reference forward",
                 make_logprobs(pp), needs=(f"serve-pp{pp}", "reference"), min_gpus=gpus),
        ]
        if pp == 1:
            steps.append(Step("bench-pp1", 40, "a short bench passes (no stall, no failure)", step_bench,
                              needs=("serve-pp1",)))
        steps.append(Step(f"stop-pp{pp}", 15, "the server shuts down", make_stop(pp), min_gpus=gpus, always=True))
        if pp == 1:
            steps += native_steps()
    return steps


def native_steps() -> list[Step]:
    """The native FP8/FP4 checkpoint served without conversion (after the dsv4_int server stopped)."""
    return [
        Step("reference-native", 30, "the reference forward of the synthetic native checkpoint (float32, bf16 floor)",
             make_reference("-native"), needs=("checkpoint",)),
        Step("serve-native", 110, "SGLang's server starts through launch on the native checkpoint (Marlin MXFP4 "
             "MoE, FP8 Marlin W8A16; PP=1)", make_serve(1, native=True), needs=("checkpoint",)),
        Step("logprobs-native", 10, "the native server's prompt logprobs match the reference forward",
             make_logprobs("native"), needs=("serve-native", "reference-native")),
        Step("stop-native", 15, "the native server shuts down", make_stop("native"), always=True),
    ]


# ----------------------------------------------------------------------------- command


def _versions() -> dict:
    from importlib import metadata

    out = {"sglang-ampere": __version__}
    for dist in ("sglang", "torch", "tilelang", "transformers"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "not installed"
    out["python"] = platform.python_version()
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=Path("gpu-check"),
                        help="folder for results.json, summary.md, logs/ and the checkpoint (default ./gpu-check)")
    parser.add_argument("--budget-s", type=float, default=None, metavar="S",
                        help=f"total time budget in seconds (default {DEFAULT_BUDGET_S:.0f} on one GPU, more on two "
                        "for the PP=2 steps); the steps' shares scale to it")
    parser.add_argument("--list", action="store_true", help="print the steps and their budgets, run nothing")


def run(args: argparse.Namespace, environ=None, smi_output: str | None = None, out=None) -> int:
    from .. import gpus as gpus_mod

    out = out or sys.stdout
    steps = all_steps()
    if args.budget_s is not None and args.budget_s < MIN_STEP_S:
        print(f"sglang-ampere gpu-check: error: --budget-s must be at least {MIN_STEP_S:.0f}", file=sys.stderr)
        return 2
    if args.list:
        out.write(render_list(steps, args.budget_s))
        return 0
    env = dict(os.environ if environ is None else environ)
    found, why = gpus_mod.detect_gpus_or_reason(env, smi_output)
    if not found:
        print(f"sglang-ampere gpu-check: no CUDA GPU on this machine ({why}), so nothing was checked. "
              f"Run it on the serving machine. (exit code {EXIT_NO_GPU})", file=out)
        return EXIT_NO_GPU
    if found[0].arch.capability >= (9, 0) and envvars.TARGET not in env:
        env[envvars.TARGET] = "ampere"
        print(f"gpu-check: {found[0].arch} card: setting {envvars.TARGET}=ampere for every step, so the "
              f"sm_80/sm_86 path is what gets checked ({envvars.TARGET}=auto checks SGLang's own)", file=out)
    ctx = Context(out=args.out, gpus=len(found), env=env)
    meta = {"device": gpus_mod.summarize(found), "versions": _versions(),
            "target": env.get(envvars.TARGET, "auto"),
            "budget_s": sum(scaled(steps, args.budget_s, len(found)).values()),
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}

    def show(r: StepResult) -> None:
        print(f"[{r.verdict.upper():7}] {r.name} ({r.seconds:.0f} s): {r.detail}", file=out, flush=True)
        if r.verdict in (FAIL, TIMEOUT) and r.log_tail:
            print("    " + r.log_tail.replace("\n", "\n    "), file=out, flush=True)

    try:
        results = run_steps(steps, ctx, args.budget_s, report=show)
    finally:
        for key in [k for k in ctx.state if k.startswith("server")]:
            proc, f = ctx.state.pop(key)
            _kill_group(proc)
            f.close()
    js, md = write_results(args.out, meta, results)
    ok = overall_ok(results)
    print(f"gpu-check: {'PASS' if ok else 'FAIL'}; {js} and {md}", file=out)
    return 0 if ok else 1
