"""``sglang-ampere quickstart [DIR]``: the whole converter path on a small synthetic model.

1. ``DIR/native``: a native-format DeepSeek-V4-Flash checkpoint (``synth``, small sizes);
2. ``DIR/dsv4_int``: ``convert`` into the INT4/INT8 format Ampere GPUs serve;
3. ``audit --against``: counts, config and SNR per class;
4. ``eval --against``: the reference forward of both checkpoints over a fixed token sequence
   (KL, top-1 agreement, perplexity, per-layer hidden SNR; figures of a random-weight model);
5. ``serve`` (with the ``serve`` extra installed; ``--no-serve`` skips it): SGLang's real server on
   this machine's CPU, started through ``sglang-ampere launch --gpu cpu`` on ``DIR/dsv4_int``; one
   chat request (its reply and time to first token) and one logprob check against the reference
   forward (gpu-check's rule), then the server is stopped;
then it prints where the checkpoint is and the command to run next. Re-running reuses what is
already there (the conversion resumes). Never imports SGLang itself (the server runs in its own
processes).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

DEFAULT_DIR = Path("sglang-ampere-quickstart")
#: Tokens the quickstart's eval runs over (seeded, so every run measures the same sequence).
EVAL_TOKENS = 128


def next_command(model_path: Path) -> str:
    """The launcher's dry-run command for the checkpoint (plain command line if the launcher is absent)."""
    try:
        from ..launch import dry_run_command
    except ImportError:
        return f"sglang-ampere launch --gpu sm86 --model-path {model_path} --dry-run"
    return dry_run_command(model_path, gpu="sm86").strip()


#: Prompt tokens of the serve step's logprob check.
SERVE_CHECK_TOKENS = 48


def serving_available() -> str | None:
    """None if SGLang is installed (the serve step can run), else why not."""
    import importlib.util

    if importlib.util.find_spec("sglang") is None:
        return "SGLang is not installed (pip install 'sglang-ampere[serve]' brings it)"
    return None


def serve_check(model: Path, logdir: Path, out=print, timeout: float = 900.0) -> int:
    """Start the CPU server on ``model`` through ``launch``, ask it one chat question and one
    logprob check, print what happened, stop it. Returns 0 on a pass."""
    import time

    from .. import server_probe as sp
    from .gpu_check import _prompt_ids

    log = logdir / "server.log"
    out(f"  starting: sglang-ampere launch --gpu cpu -- --model-path {model}   (log: {log}; about a minute)")
    t0 = time.monotonic()
    with sp.running_server(["--gpu", "cpu", "--", "--model-path", str(model)], log, timeout=timeout) as url:
        out(f"  ready at {url} after {time.monotonic() - t0:.0f} s")
        import openai

        client = openai.OpenAI(base_url=url + "/v1", api_key="EMPTY", timeout=timeout, max_retries=0)
        model_id = client.models.list().data[0].id
        t1, ttft, reply = time.monotonic(), None, []
        for chunk in client.chat.completions.create(model=model_id, messages=[{"role": "user", "content": "Hello!"}],
                                                    max_tokens=16, temperature=0, stream=True):
            if chunk.choices and chunk.choices[0].delta.content:
                ttft = ttft if ttft is not None else time.monotonic() - t1
                reply.append(chunk.choices[0].delta.content)
        out(f"  chat: {''.join(reply)!r} (random synthetic weights: noise is the right answer); "
            f"time to first token {ttft if ttft is not None else float('nan'):.2f} s")
        ids = _prompt_ids(SERVE_CHECK_TOKENS)
        got = sp.prompt_logprobs(sp.generate(url, ids))
    ref, floor = sp.reference_logprobs(model, ids, logdir / "reference")
    try:
        mean, worst, bound = sp.judge_logprobs(got, ref, floor)
    except sp.LogprobMismatch as e:
        out(f"  logprob check: FAIL: {e}")
        return 1
    out(f"  logprob check: PASS: the server's prompt logprobs are {mean:.4f} nats from the reference forward "
        f"(bound {bound:.4f} = max(4 x bf16's {floor:.4f}, 0.02)); worst position {worst:.3f}")
    out("  server stopped")
    return 0


def quickstart(root: Path, seed: int = 0, progress: bool = True, out=print, serve: bool = True) -> int:
    from ..convert.audit import audit, format_report
    from ..convert.engine import convert, describe
    from ..convert.options import Options
    from ..synth import SynthSpec, write_checkpoint

    root = Path(root)
    native, converted = root / "native", root / "dsv4_int"
    no_server = serving_available() if serve else "--no-serve"
    steps = 5 if no_server is None else 4
    if (native / "synth.json").is_file():
        out(f"[1/{steps}] synth: reusing {native}")
    else:
        out(f"[1/{steps}] synth: writing a small native-format DeepSeek-V4-Flash checkpoint to {native}")
        write_checkpoint(native, SynthSpec(), seed=seed, overwrite=native.exists(), progress=progress)
    out(f"[2/{steps}] convert: {native} -> {converted}")
    summary = convert(native, converted, Options(), progress=progress)
    out(describe(summary))
    out(f"[3/{steps}] audit: {converted} --against {native}")
    report, problems = audit(converted, native, sample=0)
    out(format_report(report, problems))
    if problems:
        out("quickstart: the audit found problems (listed above)")
        return 1
    out(f"[4/{steps}] eval: {converted} --against {native} ({EVAL_TOKENS} seeded tokens, synthetic random weights)")
    out(eval_figures(converted, native, seed, progress))
    if no_server is None:
        out(f"[5/5] serve: SGLang's real server on this machine's CPU (the CPU target), on {converted}")
        try:
            served = serve_check(converted, root / "logs", out)
        except Exception as e:      # the server's own log says why; point at it, keep the rest of the output
            out(f"  serve: FAIL ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
                f"the server's log: {root / 'logs' / 'server.log'}")
            return 1
        if served != 0:
            return 1
    else:
        out(f"(serve step skipped: {no_server})")
    out("")
    out(f"dsv4_int checkpoint: {converted.resolve()}")
    out("next: see how it would be served on an RTX 3090-class GPU (sm_86):")
    out(f"  {next_command(converted.resolve())}")
    out("or serve the native checkpoint as it is, without conversion (which to choose: docs/checkpoints.md):")
    out(f"  {next_command(native.resolve())}")
    out("try the server yourself on this CPU (slow; curl http://127.0.0.1:30000/v1/models once it is ready):")
    out(f"  sglang-ampere launch --gpu cpu -- --model-path {converted.resolve()} --port 30000")
    out("then convert the real model the same way:")
    out("  sglang-ampere audit /path/to/DeepSeek-V4-Flash            # the plan, from headers, in seconds")
    out("  sglang-ampere convert /path/to/DeepSeek-V4-Flash /path/to/DeepSeek-V4-Flash-dsv4_int --workers 2")
    return 0


def eval_figures(converted: Path, native: Path, seed: int = 0, progress: bool = False) -> str:
    """The reference forward's KL / top-1 / perplexity of the conversion against its source."""
    import torch

    from ..reference.eval import evaluate, format_report
    from ..reference.weights import Checkpoint

    vocab = Checkpoint(native).config["vocab_size"]
    ids = torch.randint(0, vocab, (EVAL_TOKENS,), generator=torch.Generator().manual_seed(seed)).tolist()
    r = evaluate(converted, ids, native, decode=4, progress=progress)
    r.pop("_logits")
    return format_report(r)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.description = ("synth -> convert -> audit on a small synthetic DeepSeek-V4-Flash, then print where the "
                     "dsv4_int checkpoint is and what to run next.")
    p.add_argument("dir", type=Path, nargs="?", default=DEFAULT_DIR,
                   help=f"working folder (default ./{DEFAULT_DIR}); holds native/ and dsv4_int/")
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic weights (default 0)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--no-serve", action="store_true",
                   help="skip step 5 (starting SGLang's server on this CPU, one chat request and one logprob check)")


def run(args: argparse.Namespace) -> int:
    from ..convert.manifest import ManifestError
    from ..safetensors_io import CheckpointError

    try:
        return quickstart(args.dir, seed=args.seed, progress=not args.quiet, serve=not args.no_serve)
    except (CheckpointError, ManifestError, ValueError, FileExistsError) as e:
        print(f"sglang-ampere quickstart: error: {e}", file=sys.stderr)
        return 2
