"""``sglang-ampere bench URL``: context x concurrency against a running OpenAI-compatible server.

For each context length C and stream count K (one *row*), K requests run at once, each a random
prompt of exactly C tokens in the served model's tokenizer and ``--output-len`` generated tokens,
streamed. The row reports what the community tables report:

* TTFT mean (ms), and prefill tok/s per stream = C / TTFT (mean over the row's requests);
* TPOT mean (ms) = (latency - TTFT) / (output tokens - 1), and decode tok/s per stream = 1000 / TPOT;
* result: ``pass``; ``stalled`` (a request got no token for ``--stall-timeout`` seconds, counted
  from when it was sent or from its last token: the row's requests are cancelled and the next row
  starts); ``failed`` (an error from the server or the connection, shown in the table's last column).

The requests are SGLang's own benchmark client (``sglang.benchmark.serving``: its
``RequestFuncInput``/``RequestFuncOutput`` and ``async_request_openai_completions``, the streaming
parser ``bench_serving`` uses); this module adds the prompts, the rows, the stall detector and the table.

The stall detector watches tokens, not bytes: each request's session (one per request in that
client) notes when a streamed line carried a token, and the row is stalled as soon as a running
request has had none for the timeout. A server that accepts a request and then sends nothing
(SGLang's scheduler idling on a request its admission never schedules: the SWA-pool stall that
``launch`` now refuses, ``plan.swa_pool_rule``), or only keep-alive bytes, is flagged within the
timeout plus :data:`WATCH_TICK_S`. The session's read timeout (aiohttp's ``SocketTimeoutError``
when no byte arrives for the timeout) stays as a second net for a server that never sends headers.

The model id comes from the server's ``/v1/models`` (the
``openai`` client); the tokenizer from ``--tokenizer`` or that id (a local path, as SGLang's
server reports it, or a name in the Hugging Face cache).

``1k`` means 1,000 tokens, so ``64k`` + 512 output tokens fits a 65,536-token context.
Exit status: 0 every row passed, 1 a row stalled or failed, 2 the benchmark could not start.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Sequence

DEFAULT_CONTEXTS = "1k,16k,32k,64k"
DEFAULT_CONCURRENCY = "1,2,4"
DEFAULT_OUTPUT_LEN = 512
#: Seconds without a streamed byte before a row is stalled. It includes the wait for the first
#: token, so it must exceed the longest prefill (64K tokens on 12 x RTX 3090 is tens of seconds).
DEFAULT_STALL_S = 120.0
STALL_MARKERS = ("SocketTimeoutError", "Timeout on reading data from socket")
#: How often (s) a row checks its requests for the stall timeout (at most a quarter of it).
WATCH_TICK_S = 1.0
PASS, STALLED, FAILED = "pass", "stalled", "failed"


class BenchError(RuntimeError):
    """The benchmark cannot start (server unreachable, no model, no tokenizer, bad arguments)."""


@dataclass
class Row:
    context: int
    concurrency: int
    result: str = PASS
    ttft_ms: float | None = None
    prefill_tps: float | None = None        # per stream
    tpot_ms: float | None = None
    decode_tps: float | None = None         # per stream, 1000 / TPOT
    prompt_tokens: list[int] = field(default_factory=list)   # as the server counted them
    output_tokens: list[int] = field(default_factory=list)
    ttft_each_ms: list[float] = field(default_factory=list)   # per request, the means' inputs
    tpot_each_ms: list[float] = field(default_factory=list)
    seconds: float = 0.0
    error: str = ""


@dataclass
class Report:
    url: str
    model: str
    output_len: int
    stall_timeout_s: float
    rows: list[Row]

    @property
    def ok(self) -> bool:
        return all(r.result == PASS for r in self.rows)

    def to_json(self) -> dict:
        return {"url": self.url, "model": self.model, "output_len": self.output_len,
                "stall_timeout_s": self.stall_timeout_s, "ok": self.ok, "rows": [asdict(r) for r in self.rows]}


# ----------------------------------------------------------------------------- inputs


def parse_lengths(text: str, what: str = "--contexts") -> list[int]:
    """``"1k,16k,512"`` -> ``[1000, 16000, 512]`` (k = 1,000)."""
    out = []
    for part in (p.strip().lower() for p in text.split(",")):
        if not part:
            continue
        mult = 1000 if part.endswith("k") else 1
        digits = part[:-1] if part.endswith("k") else part
        try:
            value = int(float(digits) * mult)
        except ValueError:
            raise BenchError(f"{what}: {part!r} is not a number (e.g. 1k,16k or 512)") from None
        if value < 1:
            raise BenchError(f"{what}: {part!r} must be at least 1")
        out.append(value)
    if not out:
        raise BenchError(f"{what}: empty list")
    return out


def base_url(url: str) -> str:
    """``http://h:p``, ``http://h:p/`` or ``http://h:p/v1`` -> ``http://h:p``."""
    url = url.rstrip("/")
    return url[:-3] if url.endswith("/v1") else url


def discover_model(url: str, timeout: float = 15.0) -> str:
    """The first model id the server's ``/v1/models`` lists."""
    import openai

    client = openai.OpenAI(base_url=base_url(url) + "/v1", api_key="EMPTY", timeout=timeout, max_retries=0)
    try:
        models = [m.id for m in client.models.list()]
    except Exception as exc:
        raise BenchError(f"{base_url(url)}/v1/models: {type(exc).__name__}: {exc} (is the server up?)") from exc
    if not models:
        raise BenchError(f"{base_url(url)}/v1/models lists no model; pass --model NAME")
    return models[0]


def load_tokenizer(name: str):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(name, local_files_only=True)   # no network during a benchmark
    except Exception:
        pass
    try:
        return AutoTokenizer.from_pretrained(name)
    except Exception as exc:
        raise BenchError(f"cannot load the tokenizer {name!r} ({type(exc).__name__}: {exc}); "
                         "pass --tokenizer PATH (the model folder)") from exc


def exact_prompt(tokenizer, tokens: int, rng: random.Random, tries: int = 16) -> str:
    """Random text that the tokenizer encodes (with its special tokens) to exactly ``tokens`` ids."""
    special = set(tokenizer.all_special_ids)
    pool = [i for i in range(len(tokenizer)) if i not in special]
    want = tokens - tokenizer.num_special_tokens_to_add()
    if want < 1:
        raise BenchError(f"a {tokens}-token prompt leaves no room next to the tokenizer's special tokens")
    ids = rng.choices(pool, k=want)
    for _ in range(tries):
        text = tokenizer.decode(ids)
        got = tokenizer.encode(text, add_special_tokens=False)
        if len(got) == want:
            return text
        ids = got[:want] if len(got) > want else got + rng.choices(pool, k=want - len(got))
    raise BenchError(f"could not build a prompt of exactly {tokens} tokens with this tokenizer")


# ----------------------------------------------------------------------------- requests


class Progress:
    """One request's progress as its streamed lines show it (monotonic seconds)."""

    def __init__(self):
        self.sent = self.last_token = time.monotonic()
        self.tokens = 0
        self.other_bytes = 0          # bytes that carried no token (keep-alives, empty chunks)
        self.finished = False         # the stream ended (not cut by a timeout or an error)
        self._after_data = False

    def saw(self, line: bytes) -> None:
        text = line.strip()
        payload = text[5:].strip() if text.startswith(b"data:") else None
        token = payload == b"[DONE]"
        if payload and not token:
            try:
                token = bool(json.loads(payload)["choices"][0]["text"])
            except (ValueError, KeyError, IndexError, TypeError):
                token = False
        if token:
            self.tokens += 1
            self.last_token = time.monotonic()
        elif text or not self._after_data:        # the blank line that ends an SSE event is not noise
            self.other_bytes += len(line)
        self._after_data = payload is not None

    def idle(self, now: float) -> float:
        return 0.0 if self.finished else now - self.last_token


@contextlib.contextmanager
def sglang_client(stall_timeout: float, ignore_eos: bool, watch: list[Progress] | None = None):
    """SGLang's benchmark client, configured: its module-level ``args`` (streaming on, ``ignore_eos``)
    and its aiohttp session, with a read timeout of ``stall_timeout`` and, for each request, a
    :class:`Progress` appended to ``watch`` (the stall detector reads them)."""
    import aiohttp
    from sglang.benchmark import serving

    def session():
        inner = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=stall_timeout),
            read_bufsize=10 * 1024 ** 2)
        progress = Progress()
        if watch is not None:
            watch.append(progress)
        return _Session(inner, () if ignore_eos else ("ignore_eos",), progress)

    old_session, old_args = serving._create_bench_client_session, getattr(serving, "args", None)
    serving.set_global_args(argparse.Namespace(
        disable_stream=False, disable_ignore_eos=not ignore_eos, return_logprob=False, top_logprobs_num=0,
        cache_report=False, header=None))
    serving._create_bench_client_session = session
    try:
        yield serving
    finally:
        serving._create_bench_client_session = old_session
        serving.args = old_args


class _Session:
    """The aiohttp session SGLang's client uses (one per request), minus request fields a server
    rejects (SGLang's ``async_request_openai_completions`` always sends ``ignore_eos``, false when
    disabled, which strict servers such as ``transformers serve`` refuse with 422), with each
    streamed line shown to the request's :class:`Progress`."""

    def __init__(self, inner, fields: tuple[str, ...], progress: Progress):
        self._inner, self._fields, self._progress = inner, fields, progress

    async def __aenter__(self):
        await self._inner.__aenter__()
        return self

    async def __aexit__(self, *exc):
        return await self._inner.__aexit__(*exc)

    def post(self, *args, json=None, **kwargs):
        if isinstance(json, dict):
            json = {k: v for k, v in json.items() if k not in self._fields}
        return _Post(self._inner.post(*args, json=json, **kwargs), self._progress)


class _Post:
    def __init__(self, ctx, progress: Progress):
        self._ctx, self._progress = ctx, progress

    async def __aenter__(self):
        return _Response(await self._ctx.__aenter__(), self._progress)

    async def __aexit__(self, *exc):
        return await self._ctx.__aexit__(*exc)


class _Response:
    def __init__(self, inner, progress: Progress):
        self._inner, self._progress = inner, progress

    def __getattr__(self, name):
        return getattr(self._inner, name)

    @property
    def content(self):
        return self._lines()

    async def _lines(self):
        async for line in self._inner.content:
            self._progress.saw(line)
            yield line
        self._progress.finished = True


def is_stall(error: str) -> bool:
    return any(m in error for m in STALL_MARKERS)


def _last_line(error: str) -> str:
    lines = [ln.strip() for ln in error.strip().splitlines() if ln.strip()]
    return lines[-1][:300] if lines else "unknown error"


def stall_message(watch: Sequence[Progress], stall_timeout: float, now: float, read_timeout: bool = False) -> str:
    """Why a row is stalled: how many requests got no token for the timeout, and what they did get.
    ``read_timeout``: the session's read timeout cut them (every unfinished request counts)."""
    stuck = [p for p in watch if not p.finished and (read_timeout or p.idle(now) >= stall_timeout)]
    never = sum(1 for p in stuck if p.tokens == 0)
    noise = sum(p.other_bytes for p in stuck)
    what = (f"{never} of them never got a first token (accepted, then nothing: e.g. a scheduler that never "
            "admits it)" if never else "all had started streaming")
    extra = f"; {noise} bytes without a token arrived meanwhile" if noise else ""
    return (f"stalled: no token for {stall_timeout:g} s from {len(stuck)} of {len(watch) or len(stuck)} requests, "
            f"{what}{extra}; row cancelled")


async def _run_row(serving, api_url: str, model: str, prompts: list[str], context: int, output_len: int,
                   pbar, watch: list[Progress] | None = None, stall_timeout: float = DEFAULT_STALL_S
                   ) -> tuple[list, str, str]:
    """(outputs of the finished requests, result, error) for one row. ``watch``: the requests'
    :class:`Progress` (filled by :func:`sglang_client`'s sessions); a request without a token for
    ``stall_timeout`` seconds stalls the row."""
    watch = [] if watch is None else watch
    inputs = [serving.RequestFuncInput(prompt=p, api_url=api_url, prompt_len=context, output_len=output_len,
                                       model=model, lora_name="", image_data=None, extra_request_body={})
              for p in prompts]
    tasks = [asyncio.ensure_future(serving.async_request_openai_completions(i, pbar=pbar)) for i in inputs]
    outputs, result, error = [], PASS, ""
    tick = min(WATCH_TICK_S, stall_timeout / 4)
    pending = set(tasks)
    try:
        while pending and result == PASS:
            done, pending = await asyncio.wait(pending, timeout=tick, return_when=asyncio.FIRST_COMPLETED)
            for fut in done:
                out = fut.result()
                if out.success and out.output_len > 0:
                    outputs.append(out)
                    continue
                if is_stall(out.error):
                    result, error = STALLED, stall_message(watch, stall_timeout, time.monotonic(), True)
                else:
                    result, error = FAILED, _last_line(out.error) if out.error else "no token generated"
                break
            now = time.monotonic()
            if result == PASS and pending and any(p.idle(now) >= stall_timeout for p in watch):
                result, error = STALLED, stall_message(watch, stall_timeout, now)
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return outputs, result, error


def row_metrics(row: Row, outputs: list) -> None:
    """Fill the row's means from SGLang's RequestFuncOutput objects (seconds -> ms)."""
    if not outputs:
        return
    ttfts = [o.ttft for o in outputs if o.ttft > 0]
    if ttfts:
        row.ttft_ms = 1000 * sum(ttfts) / len(ttfts)
        row.prefill_tps = sum(o.prompt_len / o.ttft for o in outputs if o.ttft > 0) / len(ttfts)
    tpots = [(o.latency - o.ttft) / (o.output_len - 1) for o in outputs if o.output_len > 1 and o.ttft > 0]
    if tpots:
        row.tpot_ms = 1000 * sum(tpots) / len(tpots)
        row.decode_tps = 1000 / row.tpot_ms if row.tpot_ms > 0 else None
    row.ttft_each_ms = [1000 * t for t in ttfts]
    row.tpot_each_ms = [1000 * t for t in tpots]
    row.prompt_tokens = [o.prompt_len for o in outputs]
    row.output_tokens = [o.output_len for o in outputs]


def run_bench(url: str, contexts: Sequence[int], concurrency: Sequence[int], output_len: int = DEFAULT_OUTPUT_LEN,
              stall_timeout: float = DEFAULT_STALL_S, model: str | None = None, tokenizer: str | None = None,
              ignore_eos: bool = True, seed: int = 0, progress: bool = True,
              on_row_start: Callable[[int, int], None] | None = None) -> Report:
    """Run every (context, concurrency) row in order. ``on_row_start(context, concurrency)`` is called
    just before a row's requests are sent (tests use it to pause the server)."""
    from tqdm.auto import tqdm

    if output_len < 1:
        raise BenchError("--output-len must be at least 1")
    if stall_timeout <= 0:
        raise BenchError("--stall-timeout must be positive")
    model = model or discover_model(url)
    tok = load_tokenizer(tokenizer or model)
    rng = random.Random(seed)
    api_url = base_url(url) + "/v1/completions"
    plan = [(c, k) for c in contexts for k in concurrency]
    rows: list[Row] = []
    pbar = tqdm(total=sum(k for _, k in plan), desc="bench", unit="req", file=sys.stderr, disable=not progress)
    try:
        watch: list[Progress] = []
        with sglang_client(stall_timeout, ignore_eos, watch) as serving:
            for context, k in plan:
                pbar.set_description(f"bench {context} tok x {k}")
                prompts = [exact_prompt(tok, context, rng) for _ in range(k)]
                row = Row(context, k)
                if on_row_start is not None:
                    on_row_start(context, k)
                start = time.monotonic()
                watch.clear()
                outputs, row.result, row.error = asyncio.run(
                    _run_row(serving, api_url, model, prompts, context, output_len, pbar, watch, stall_timeout))
                row.seconds = time.monotonic() - start
                row_metrics(row, outputs)
                rows.append(row)
    finally:
        pbar.close()
    return Report(base_url(url), model, output_len, stall_timeout, rows)


# ----------------------------------------------------------------------------- output


def _fmt(v: float | None, digits: int = 1) -> str:
    return "-" if v is None else f"{v:,.{digits}f}"


def _context_label(n: int) -> str:
    return f"{n // 1000}K" if n % 1000 == 0 and n >= 1000 else str(n)


def render_markdown(report: Report) -> str:
    lines = [f"sglang-ampere bench: {report.model} at {report.url}, {report.output_len} output tokens per request, "
             f"stall timeout {report.stall_timeout_s:g} s", "",
             "| context | streams | TTFT mean (ms) | prefill tok/s/stream | TPOT mean (ms) | decode tok/s/stream "
             "| result |",
             "|---|---|---|---|---|---|---|"]
    for r in report.rows:
        result = r.result if r.result == PASS else f"{r.result}: {r.error}"
        lines.append(f"| {_context_label(r.context)} | {r.concurrency} | {_fmt(r.ttft_ms)} | {_fmt(r.prefill_tps)} "
                     f"| {_fmt(r.tpot_ms, 2)} | {_fmt(r.decode_tps)} | {result.replace('|', '/')} |")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- command


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("url", help="the server, e.g. http://127.0.0.1:30000")
    parser.add_argument("--contexts", default=DEFAULT_CONTEXTS,
                        help=f"prompt lengths in tokens, k = 1,000 (default {DEFAULT_CONTEXTS})")
    parser.add_argument("--concurrency", default=DEFAULT_CONCURRENCY,
                        help=f"streams at once per row (default {DEFAULT_CONCURRENCY})")
    parser.add_argument("--output-len", type=int, default=DEFAULT_OUTPUT_LEN,
                        help=f"tokens generated per request (default {DEFAULT_OUTPUT_LEN})")
    parser.add_argument("--stall-timeout", type=float, default=DEFAULT_STALL_S, metavar="S",
                        help="seconds without a streamed token (including the first) before a row is marked "
                        f"stalled and cancelled (default {DEFAULT_STALL_S:g})")
    parser.add_argument("--model", help="model name to request (default: the first of the server's /v1/models)")
    parser.add_argument("--tokenizer", metavar="PATH", help="tokenizer folder (default: the model id, when local)")
    parser.add_argument("--no-ignore-eos", action="store_true",
                        help="do not send ignore_eos (for servers that reject it, e.g. transformers serve; "
                        "outputs may then end early at EOS)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random prompts")
    parser.add_argument("--json", action="store_true", help="print the report as JSON instead of the table")


def run(args: argparse.Namespace) -> int:
    try:
        report = run_bench(args.url, parse_lengths(args.contexts), parse_lengths(args.concurrency, "--concurrency"),
                           args.output_len, args.stall_timeout, args.model, args.tokenizer,
                           ignore_eos=not args.no_ignore_eos, seed=args.seed)
    except BenchError as exc:
        print(f"sglang-ampere bench: error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
    else:
        print(render_markdown(report), end="")
    return 0 if report.ok else 1
