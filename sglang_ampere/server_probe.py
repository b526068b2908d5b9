"""Start SGLang's server through ``sglang-ampere launch``, talk to it, and judge its logprobs.

The pieces ``gpu-check`` (on a card), ``quickstart`` (the CPU target) and the CPU server tests share:

* :func:`running_server`: ``sglang-ampere launch ARGS`` in its own process group, ready when
  ``/v1/models`` answers, always stopped (the whole group) when the block ends;
* :func:`generate`: SGLang's native ``/generate`` with prompt and output logprobs;
* :func:`reference_logprobs`: the reference forward (``sglang-ampere eval``) of the same checkpoint
  in float32, and its bf16 run's distance from it: the noise floor;
* :func:`judge_logprobs`: the pass rule. ``d(x)`` = mean over positions of ``|logprob(x) -
  logprob(reference float32)|``; the server passes if ``d(server) <= max(4 * d(reference bf16),
  0.02 nats)``: a kernel or stand-in may differ from the reference by rounding, a few times what
  bf16 alone does, never by a wrong position, scale or page.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Iterator, Mapping, Sequence

#: The pass rule of :func:`judge_logprobs` (module docstring).
LOGPROB_FACTOR, LOGPROB_FLOOR = 4.0, 0.02
LOG_TAIL_LINES = 40


class ServerNotReady(RuntimeError):
    """The server exited or did not answer in time; the message ends with its log's tail."""

    def __init__(self, what: str, tail: str, timed_out: bool):
        super().__init__(f"{what}:\n{tail}")
        self.what, self.tail, self.timed_out = what, tail, timed_out


class LogprobMismatch(AssertionError):
    """The server's logprobs are further from the reference forward than the rule allows."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def kill_group(proc: subprocess.Popen, grace: float = 10.0) -> None:
    """SIGTERM, then SIGKILL, the process group ``proc`` leads (the server and its children)."""
    if proc.poll() is not None:
        return
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=grace)
            return
        except subprocess.TimeoutExpired:
            continue


def tail(text: str, n: int = LOG_TAIL_LINES) -> str:
    """The last ``n`` lines of ``text``, a line of 2000 characters or more cut to its start."""
    # SGLang logs its whole ServerArgs on one line: useless in a tail
    lines = [ln if len(ln) < 2000 else ln[:200] + " ...[cut]" for ln in text.rstrip().splitlines()]
    return "\n".join(lines[-n:])


def log_tail(path: Path, n: int = LOG_TAIL_LINES) -> str:
    """:func:`tail` of the file at ``path`` (empty when there is none)."""
    return tail(path.read_text(errors="replace") if path.exists() else "", n)


def cli(*args: str) -> list[str]:
    """``sglang-ampere ARGS`` run with this interpreter."""
    return [sys.executable, "-m", "sglang_ampere", *args]


def wait_ready(url: str, proc: subprocess.Popen, deadline: float, log: Path) -> None:
    while True:
        if proc.poll() is not None:
            raise ServerNotReady(f"the server exited ({proc.returncode}) before it was ready; log {log}",
                                 log_tail(log), timed_out=False)
        try:
            with urllib.request.urlopen(url + "/v1/models", timeout=5) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise ServerNotReady(f"the server did not answer /v1/models in time; log {log}", log_tail(log),
                                 timed_out=True)
        time.sleep(1)


@contextlib.contextmanager
def running_server(launch_args: Sequence[str], log: Path, env: Mapping[str, str] | None = None,
                   timeout: float = 600.0) -> Iterator[str]:
    """``sglang-ampere launch LAUNCH_ARGS -- --host 127.0.0.1 --port P``; yields the base URL.

    ``launch_args`` are the launcher's own options and SGLang's arguments (with ``--`` between
    them if needed); host and port are appended. The server's output goes to ``log``.
    """
    port = free_port()
    args = list(launch_args)
    if "--" not in args:
        args.append("--")
    cmd = cli("launch", *args, "--host", "127.0.0.1", "--port", str(port))
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as f:
        f.write(f"$ {' '.join(cmd)}\n".encode())
        f.flush()
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, start_new_session=True,
                                env=None if env is None else dict(env))
        try:
            url = f"http://127.0.0.1:{port}"
            wait_ready(url, proc, time.monotonic() + timeout, log)
            yield url
        finally:
            kill_group(proc)


def post_json(url: str, body: dict, timeout: float) -> dict:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read())


def generate(url: str, input_ids: Sequence[int], max_new_tokens: int = 1, timeout: float = 300.0,
             logprob_start_len: int = 0) -> dict:
    """Greedy ``/generate`` with the logprobs of prompt tokens from ``logprob_start_len`` on and of
    every output token; SGLang's JSON answer.

    SGLang reuses a cached prefix only up to ``logprob_start_len`` (``schedule_batch.py``
    1774-1775: tokens whose logprobs are asked for are recomputed), so a request that should hit
    the radix cache asks for logprobs from the end of the prefix on.
    """
    return post_json(url + "/generate", {
        "input_ids": list(input_ids),
        "sampling_params": {"max_new_tokens": max_new_tokens, "temperature": 0},
        "return_logprob": True, "logprob_start_len": logprob_start_len}, timeout)


def prompt_logprobs(answer: dict) -> list[float]:
    """Logprobs of the prompt tokens the request asked for (token 0 has none and is skipped)."""
    return [float(e[0]) for e in answer["meta_info"]["input_token_logprobs"] if e[0] is not None]


def output_tokens(answer: dict) -> list[tuple[int, float]]:
    """(token id, logprob) of each generated token."""
    return [(int(e[1]), float(e[0])) for e in answer["meta_info"]["output_token_logprobs"]]


def logprobs_from_logits(path: Path, ids: Sequence[int]) -> list[float]:
    """``log_softmax(logits[t-1])[ids[t]]`` for t = 1..n-1, from an ``eval --dump-logits`` file."""
    import torch
    from safetensors.torch import load_file

    logits = load_file(str(path))["logits"].double()
    lp = torch.log_softmax(logits, dim=-1)
    return [float(lp[t - 1, ids[t]]) for t in range(1, len(ids))]


def reference_logprobs(model: Path | str, ids: Sequence[int], workdir: Path, device: str = "cpu",
                       timeout: float = 900.0, env: Mapping[str, str] | None = None) -> tuple[list[float], float]:
    """(float32 reference logprobs of ``ids[1:]``, mean |bf16 - float32| distance: the floor)."""
    workdir.mkdir(parents=True, exist_ok=True)
    tokens = workdir / "ids.json"
    tokens.write_text(json.dumps(list(ids)))
    ref = {}
    for dtype in ("float32", "bfloat16"):
        dump = workdir / f"ref_{dtype}.safetensors"
        proc = subprocess.run(cli("eval", str(model), "--tokens", str(tokens), "--dtype", dtype, "--device", device,
                                  "--dump-logits", str(dump), "--quiet"),
                              capture_output=True, text=True, timeout=timeout, env=None if env is None else dict(env))
        if proc.returncode != 0:
            raise RuntimeError(f"sglang-ampere eval ({dtype}) failed with {proc.returncode}:\n{proc.stderr[-3000:]}")
        ref[dtype] = logprobs_from_logits(dump, ids)
    floor = sum(abs(a - b) for a, b in zip(ref["bfloat16"], ref["float32"])) / max(1, len(ids) - 1)
    return ref["float32"], floor


def judge_logprobs(server: Sequence[float], ref: Sequence[float], floor: float) -> tuple[float, float, float]:
    """(mean |d|, worst |d|, bound); :class:`LogprobMismatch` past the bound (module docstring)."""
    if len(server) != len(ref) or not ref:
        raise LogprobMismatch(f"the server returned {len(server)} logprobs, expected {len(ref)}")
    diffs = [abs(a - b) for a, b in zip(server, ref)]
    mean, worst = sum(diffs) / len(diffs), max(diffs)
    bound = max(LOGPROB_FACTOR * floor, LOGPROB_FLOOR)
    if not mean <= bound:        # NaN fails too
        raise LogprobMismatch(f"logprobs diverge from the reference: mean |d| {mean:.4f} nats > {bound:.4f} "
                              f"({LOGPROB_FACTOR:g} x the bf16 reference's {floor:.4f}); worst position {worst:.3f}")
    return mean, worst, bound
