"""``sglang-ampere bench`` against a real OpenAI-compatible server on this CPU machine.

The server is ``transformers serve`` (FastAPI/uvicorn, streaming ``/v1/completions``) on 127.0.0.1
with a 2-layer random-weight Llama and a word-level tokenizer this module builds offline, put in
a private Hugging Face cache so the server lists it in ``/v1/models`` and loads it by name. The
tests check exact prompt lengths as the server counted them, the metrics' relations, a stall
(the server SIGSTOPped for longer than the stall timeout, then SIGCONTed) and failed requests.
"""

from __future__ import annotations

import json
import math
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from sglang_ampere.commands import bench

MODEL_ID = "local/tiny"
REV = "0123456789abcdef0123456789abcdef01234567"
WORDS = 500


def make_tiny_model(out: Path, seed: int = 0) -> Path:
    """A 2-layer Llama (hidden 64) and a word-level tokenizer ``w0 .. w499``, saved to ``out``.
    The special tokens' output rows are zero, so greedy decoding never picks EOS (the server
    does not take ``ignore_eos``) and every request generates exactly max_tokens tokens."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    specials = ["<unk>", "<s>", "</s>"]
    vocab = {t: i for i, t in enumerate(specials + [f"w{i}" for i in range(WORDS)])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>")
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(vocab), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=2048,
                      bos_token_id=1, eos_token_id=2, pad_token_id=0, tie_word_embeddings=False)
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        model.lm_head.weight[: len(specials)] = 0
    model.save_pretrained(out)
    fast.save_pretrained(out)
    return out


def hf_cache_with(model_dir: Path, cache: Path) -> Path:
    """A Hugging Face hub cache holding ``model_dir`` as ``local/tiny`` (refs/main -> one snapshot)."""
    repo = cache / "models--local--tiny"
    snap = repo / "snapshots" / REV
    snap.mkdir(parents=True)
    (repo / "blobs").mkdir()
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(REV)
    for f in model_dir.iterdir():
        (snap / f.name).write_bytes(f.read_bytes())
    return cache


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("tiny") / "tiny")


@pytest.fixture(scope="module")
def server(tiny, tmp_path_factory):
    """``transformers serve`` on 127.0.0.1 (killed in the finalizer, SIGCONT first if paused)."""
    for mod in ("fastapi", "uvicorn", "accelerate"):
        pytest.importorskip(mod, reason=f"transformers serve needs {mod} (pip install '.[test]')")
    exe = Path(sys.executable).parent / "transformers"
    if not exe.exists():
        pytest.skip(f"no transformers CLI next to {sys.executable}")
    cache = hf_cache_with(tiny, tmp_path_factory.mktemp("hf") / "hub")
    port = _free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache), "HF_HOME": str(cache.parent),
           "TRANSFORMERS_OFFLINE": "1"}
    log = open(cache.parent / "serve.log", "w+")
    proc = subprocess.Popen([str(exe), "serve", "--host", "127.0.0.1", "--port", str(port), "--device", "cpu",
                             "--log-level", "warning"], env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            if proc.poll() is not None:
                log.seek(0)
                pytest.fail(f"transformers serve exited {proc.returncode}:\n{log.read()[-3000:]}")
            try:
                with urllib.request.urlopen(url + "/health", timeout=2):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail("transformers serve did not answer /health within 90 s")
                time.sleep(0.5)
        yield {"url": url, "proc": proc, "cache": cache, "tokenizer": str(tiny)}
    finally:
        with_pid = proc.poll() is None
        if with_pid:
            os.kill(proc.pid, signal.SIGCONT)
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=15)
        log.close()


@pytest.fixture
def hf_env(server):
    return server


# ----------------------------------------------------------------------------- no server


def test_parse_lengths():
    assert bench.parse_lengths("1k,16k, 64k,512") == [1000, 16000, 64000, 512], bench.parse_lengths("1k,16k, 64k,512")
    for bad in ("", "x", "0", "1k,-2"):
        with pytest.raises(bench.BenchError):
            bench.parse_lengths(bad)
    assert bench.base_url("http://h:1/v1/") == "http://h:1" and bench.base_url("http://h:1") == "http://h:1", "base_url"


def test_exact_prompt_lengths(tiny):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny)
    rng = random.Random(3)
    for n in (1, 7, 64, 1000):
        text = bench.exact_prompt(tok, n, rng)
        assert len(tok.encode(text)) == n, f"{n}: {len(tok.encode(text))}"


def test_markdown_and_json_shape():
    rows = [bench.Row(1000, 1, bench.PASS, 250.0, 4000.0, 31.25, 32.0, [1000], [512], [250.0], [31.25], 16.2),
            bench.Row(16000, 2, bench.STALLED, error="no streamed token for the stall timeout; row cancelled"),
            bench.Row(64000, 4, bench.FAILED, error="Bad Request: a|b")]
    report = bench.Report("http://h:1", "m", 512, 120.0, rows)
    md = bench.render_markdown(report).splitlines()
    want = ["| 1K | 1 | 250.0 | 4,000.0 | 31.25 | 32.0 | pass |",
            "| 16K | 2 | - | - | - | - | stalled: no streamed token for the stall timeout; row cancelled |",
            "| 64K | 4 | - | - | - | - | failed: Bad Request: a/b |"]
    assert md[-3:] == want, "\n".join(md)
    js = json.loads(json.dumps(report.to_json()))
    assert js["ok"] is False and [r["result"] for r in js["rows"]] == ["pass", "stalled", "failed"], js


# ----------------------------------------------------------------------------- real server


@pytest.mark.slow
def test_bench_against_server(hf_env):
    report = bench.run_bench(hf_env["url"], [64, 300], [1, 2], output_len=24, stall_timeout=30,
                             ignore_eos=False, progress=False, tokenizer=hf_env["tokenizer"])
    assert report.model == MODEL_ID, f"model from /v1/models: {report.model}"
    assert [(r.context, r.concurrency, r.result) for r in report.rows] == [
        (64, 1, "pass"), (64, 2, "pass"), (300, 1, "pass"), (300, 2, "pass")], (
        [(r.context, r.concurrency, r.result, r.error) for r in report.rows])
    for r in report.rows:
        # the server's own count of each prompt: exact lengths in the served model's tokenizer
        assert r.prompt_tokens == [r.context] * r.concurrency and r.output_tokens == [24] * r.concurrency, (
            f"{r.context}x{r.concurrency}: prompt {r.prompt_tokens} output {r.output_tokens}")
        assert r.ttft_ms > 0 and r.tpot_ms > 0 and 0 < r.ttft_ms < 1000 * r.seconds, r
        assert abs(r.decode_tps * r.tpot_ms - 1000) <= 1e-6, "decode tok/s per stream must be 1000 / TPOT"
        # the means are over the row's requests: TTFT, prefill tok/s = context / TTFT, TPOT
        each = r.ttft_each_ms
        assert len(each) == r.concurrency and math.isclose(r.ttft_ms, sum(each) / len(each)), (
            f"TTFT mean {r.ttft_ms} of {each}")
        assert math.isclose(r.prefill_tps, sum(r.context / (t / 1000) for t in each) / len(each)), (
            f"prefill tok/s {r.prefill_tps} vs context / TTFT of {each}")
        assert math.isclose(r.tpot_ms, sum(r.tpot_each_ms) / len(r.tpot_each_ms)), (
            f"TPOT mean {r.tpot_ms} of {r.tpot_each_ms}")


@pytest.mark.slow
def test_cli_json_tokenizer_from_the_model_id(hf_env):
    """The console command in a fresh process: model id from /v1/models, its tokenizer found by
    that id in the (offline) Hugging Face cache, the JSON report on stdout."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(hf_env["cache"])}
    cmd = [sys.executable, "-m", "sglang_ampere", "bench", hf_env["url"], "--contexts", "32", "--concurrency",
           "1", "--output-len", "8", "--json", "--no-ignore-eos", "--stall-timeout", "30"]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)
    js = json.loads(p.stdout) if p.returncode == 0 else {}
    assert (p.returncode == 0 and js["ok"] is True and js["model"] == MODEL_ID
            and js["rows"][0]["prompt_tokens"] == [32]), (p.returncode, p.stdout[-2000:], p.stderr[-2000:])


@pytest.mark.slow
def test_stalled_row_is_cancelled_and_the_next_row_runs(hf_env):
    """SIGSTOP the server as the first row starts (longer than the stall timeout), SIGCONT later:
    the first row is stalled and cut at the timeout, the next row passes."""
    pid, stall = hf_env["proc"].pid, 4.0
    timers = []

    def pause_first_row(context, k):
        if not timers:              # first row: pause the server past the stall timeout
            os.kill(pid, signal.SIGSTOP)
            t = threading.Timer(stall + 4.0, os.kill, (pid, signal.SIGCONT))
            t.start()
            timers.append(t)
        else:                       # later rows start once the server runs again
            timers[0].join(timeout=30)

    try:
        report = bench.run_bench(hf_env["url"], [48], [2, 1], output_len=16, stall_timeout=stall,
                                 ignore_eos=False, progress=False, model=MODEL_ID,
                                 tokenizer=hf_env["tokenizer"], on_row_start=pause_first_row)
    finally:
        for t in timers:
            t.join(timeout=30)
        os.kill(pid, signal.SIGCONT)
    first, second = report.rows
    assert first.result == bench.STALLED and "stall" in first.error, first
    assert stall <= first.seconds < stall + 3.0, (      # cut at the timeout, not when the server resumed
        f"the stalled row took {first.seconds:.1f} s; it must end at the {stall} s timeout")
    assert second.result == bench.PASS and second.prompt_tokens == [48], second
    assert not report.ok and "stalled" in bench.render_markdown(report), "a stalled row must make the report fail"


@pytest.mark.slow
def test_failed_rows(hf_env, capsys):
    """A model the server does not have: every row failed with the server's answer, exit 1."""
    args = _args(hf_env["url"], "--contexts", "16,32", "--concurrency", "1", "--output-len", "4",
                 "--model", "local/absent", "--tokenizer", hf_env["tokenizer"], "--no-ignore-eos")
    rc = bench.run(args)
    out = capsys.readouterr().out
    rows = [ln for ln in out.splitlines() if ln.startswith("| 16 ") or ln.startswith("| 32 ")]
    assert rc == 1 and len(rows) == 2 and all("| failed: " in ln for ln in rows), (rc, out)


@pytest.mark.slow
def test_unreachable_server_exit_2(capsys):
    args = _args(f"http://127.0.0.1:{_free_port()}", "--contexts", "8")
    assert bench.run(args) == 2 and "/v1/models" in capsys.readouterr().err, (
        "an unreachable server must be exit 2 with the URL named")


def _args(*argv):
    import argparse

    p = argparse.ArgumentParser()
    bench.add_arguments(p)
    return p.parse_args(list(argv))


# ----------------------------------------------------------------------------- a server that never answers


class _FakeServer:
    """An HTTP server on 127.0.0.1 (its own thread and event loop) that accepts every completion
    request and then, by ``mode``: ``silent`` sends nothing; ``headers`` sends 200 and SSE headers,
    then nothing (what SGLang's server does for a request its scheduler never admits: the SWA-pool
    stall); ``keepalive`` headers, then a blank line every 0.2 s forever; ``slow`` one token every
    0.5 s, 8 in all, then [DONE]; ``stops`` 2 tokens, then nothing."""

    def __init__(self, mode: str):
        import asyncio

        self.mode, self.loop, self.port = mode, asyncio.new_event_loop(), None
        ready = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(ready,), daemon=True)
        self.thread.start()
        ready.wait(10)

    def _run(self, ready):
        import asyncio

        async def start():
            self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
            self.port = self.server.sockets[0].getsockname()[1]
            ready.set()

        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(start())
        self.loop.run_forever()

    async def _handle(self, reader, writer):
        import asyncio

        try:
            await reader.readuntil(b"\r\n\r\n")
            if self.mode != "silent":
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n")
            tokens = {"slow": 8, "stops": 2}.get(self.mode, 0)
            for i in range(tokens):
                await asyncio.sleep(0.5)
                chunk = {"choices": [{"text": f"w{i} "}], "usage": {"completion_tokens": i + 1}}
                writer.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
                await writer.drain()
            if self.mode == "slow":
                writer.write(b"data: [DONE]\n\n")
                await writer.drain()
                writer.close()
                return
            while True:
                await asyncio.sleep(0.2)
                if self.mode == "keepalive":
                    writer.write(b"\n")
                    await writer.drain()
        except (OSError, asyncio.IncompleteReadError, asyncio.CancelledError):
            writer.close()

    def close(self):
        import asyncio

        async def stop():
            self.server.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@pytest.mark.parametrize("mode", ["silent", "headers", "keepalive", "stops", "slow"])
def test_a_request_without_progress_is_stalled_within_the_timeout(tiny, mode):
    """Accepted and never answered (or only keep-alive bytes, or tokens that stop): STALLED with the
    reason, at the 2 s timeout plus a tick, not when the server gives up. Negative control (``slow``):
    tokens 0.5 s apart over 4 s, twice the timeout, pass: the timeout counts from the last token."""
    server, stall = _FakeServer(mode), 2.0
    try:
        report = bench.run_bench(f"http://127.0.0.1:{server.port}", [16], [1], output_len=8, stall_timeout=stall,
                                 model="m", tokenizer=str(tiny), ignore_eos=False, progress=False)
    finally:
        server.close()
    (row,) = report.rows
    if mode == "slow":
        assert row.result == bench.PASS and row.output_tokens == [8] and row.seconds > 2 * stall, row
        return
    assert row.result == bench.STALLED and not report.ok, row
    assert stall <= row.seconds < stall + 2.0, f"{mode}: stalled row took {row.seconds:.1f} s"
    assert row.error.startswith("stalled: no token for 2 s from 1 of 1 requests"), row.error
    assert ("never got a first token" in row.error) == (mode != "stops"), row.error
    assert ("bytes without a token" in row.error) == (mode == "keepalive"), row.error
