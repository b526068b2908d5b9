"""SGLang's real server on CPU with pipeline parallelism (``--pp-size 2`` over gloo) and with MTP
speculative decoding (``launch --speculative mtp``: SGLang's EAGLE on the checkpoint's ``mtp.0``
block), each started through ``sglang-ampere launch --gpu cpu`` on the synthetic dsv4_int checkpoint.

Servers are expensive here (each about a minute to start on CI's 2 cores and ~3.5 GB of RAM), so
each module fixture starts one server, sends every request the tests need, stops the server's
whole process group (also when something fails) and returns the answers: only one server of this
module runs at a time. Prompts are short.

* PP=2: prompt and generated-token logprobs against the float32 reference forward with
  gpu-check's rule (:func:`sglang_ampere.server_probe.judge_logprobs`), and prompt logprobs against
  the PP=1 server's; negative control: another prompt's logprobs fail the same rule.
* MTP at PP=1 and PP=2: exactly the greedy tokens of the same request without speculation (up to
  a bf16 near tie, which must show in the plain run's own top-2: :func:`greedy_agreement`), with
  drafts both accepted and rejected (SGLang's own counts); negative control: the other prompt's
  tokens differ, and a mismatch that is not a near tie fails (``test_greedy_agreement_rule``).

The checkpoint is ``synth``'s, rewritten by :func:`helpers.agreeable_draft.make_agreeable` so that
its MTP draft agrees with the target about half of the time (with random weights no draft is ever
accepted, and the accept path would never run); every server uses the same checkpoint.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

import pytest
from helpers.agreeable_draft import make_agreeable
from helpers.cpu_server import ids, server_env, synth_dsv4_int

from sglang_ampere import server_probe as sp

pytestmark = [pytest.mark.slow, pytest.mark.cpu_server]

START_TIMEOUT = 600.0
REQUEST_TIMEOUT = 300.0
PROMPT_LEN, GEN = 40, 8
SEEDS = (11, 12)                  # two prompts: the second is every check's negative control
TIE = 0.1                         # nats: a plain-run top-2 margin bf16 rounding may flip (see greedy_agreement)
AGREE_SHIFT = 6                   # layers' outputs x 2**-6: the bigram draft agrees ~40% of the time


PROMPTS = [ids(PROMPT_LEN, s) for s in SEEDS]


@contextlib.contextmanager
def launched(launch_args: list[str], log: Path):
    """:func:`sglang_ampere.server_probe.running_server`; yields (url, seconds to ready)."""
    t0 = time.monotonic()
    with sp.running_server(launch_args, log, env=server_env(), timeout=START_TIMEOUT) as url:
        yield url, time.monotonic() - t0


def serve_and_ask(ckpt: Path, logdir: Path, name: str, launcher: list[str], server: list[str],
                  top: int = 0) -> dict:
    """Start, ask each prompt for GEN greedy tokens with logprobs (and the ``top`` most likely
    tokens at each output position), stop. Returns the answers."""
    log = logdir / f"{name}.log"
    with launched(["--gpu", "cpu", *launcher, "--", "--model-path", str(ckpt), *server], log) as (url, ready_s):
        answers, times = [], []
        for p in PROMPTS:
            t0 = time.monotonic()
            answers.append(sp.post_json(url + "/generate", {
                "input_ids": p, "sampling_params": {"max_new_tokens": GEN, "temperature": 0},
                "return_logprob": True, "logprob_start_len": 0, **({"top_logprobs_num": top} if top else {})},
                REQUEST_TIMEOUT))
            times.append(time.monotonic() - t0)
    return {"answers": answers, "ready_s": ready_s, "request_s": times, "log": log}


def tokens(answer: dict) -> list[int]:
    return [t for t, _ in sp.output_tokens(answer)]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return synth_dsv4_int(tmp_path_factory.mktemp("cpu-pp-spec"), seed=7,
                          native_hook=lambda native: make_agreeable(native, shift=AGREE_SHIFT))


@pytest.fixture(scope="module")
def logdir(tmp_path_factory):
    return tmp_path_factory.mktemp("cpu-pp-spec-logs")


@pytest.fixture(scope="module")
def pp2(ckpt, logdir):
    return serve_and_ask(ckpt, logdir, "pp2", [], ["--pp-size", "2"], top=2)


@pytest.fixture(scope="module")
def mtp_pp1(ckpt, logdir):
    return serve_and_ask(ckpt, logdir, "mtp-pp1", ["--speculative", "mtp"], [])


@pytest.fixture(scope="module")
def mtp_pp2(ckpt, logdir):
    return serve_and_ask(ckpt, logdir, "mtp-pp2", ["--speculative", "mtp"], ["--pp-size", "2"])


@pytest.fixture(scope="module")
def reference(ckpt, pp2, tmp_path_factory):
    """The float32 reference forward over prompt 0 and PP=2's greedy tokens, and its bf16 floor."""
    full = PROMPTS[0] + tokens(pp2["answers"][0])
    ref, floor = sp.reference_logprobs(ckpt, full, tmp_path_factory.mktemp("cpu-pp-spec-ref"))
    return full, ref, floor


def all_logprobs(answer: dict) -> list[float]:
    return sp.prompt_logprobs(answer) + [lp for _, lp in sp.output_tokens(answer)]


def test_pp2_logprobs_match_the_reference(pp2, reference):
    full, ref, floor = reference
    a, b = pp2["answers"]
    assert a["meta_info"]["prompt_tokens"] == PROMPT_LEN and len(tokens(a)) == GEN
    mean, worst, bound = sp.judge_logprobs(all_logprobs(a), ref, floor)
    print(f"PP=2 vs float32 reference: mean |d| {mean:.4f} (bound {bound:.4f}, floor {floor:.4f}), "
          f"worst {worst:.3f}; ready in {pp2['ready_s']:.0f} s, requests {pp2['request_s']}")
    # negative control: the other prompt's logprobs fail the same rule
    with pytest.raises(sp.LogprobMismatch):
        sp.judge_logprobs(all_logprobs(b), ref, floor)


def test_pp2_prompt_logprobs_match_pp1(pp2, mtp_pp1, reference):
    """PP=1's prompt logprobs come from the target's prefill, which speculation does not change."""
    _, _, floor = reference
    for k in range(len(PROMPTS)):
        one, two = sp.prompt_logprobs(mtp_pp1["answers"][k]), sp.prompt_logprobs(pp2["answers"][k])
        mean, worst, bound = sp.judge_logprobs(two, one, floor)
        print(f"prompt {k}: PP=2 vs PP=1 prompt logprobs mean |d| {mean:.2e}, worst {worst:.2e} (bound {bound:.4f})")
    with pytest.raises(sp.LogprobMismatch):
        sp.judge_logprobs(sp.prompt_logprobs(pp2["answers"][1]), sp.prompt_logprobs(mtp_pp1["answers"][0]), floor)


def greedy_agreement(got: list[int], plain: dict) -> int:
    """How many leading tokens of ``got`` equal the plain run's greedy tokens. Where they first
    differ, the plain run's own top-2 must show a near tie that ``got`` took the other side of:
    the speculative verify pass scores 4 tokens in one extend forward, the plain run one token
    per decode step, so bf16 rounding differs and may flip an argmax whose margin is below
    :data:`TIE` nats (measured: a 0.047-nat tie, which the float32 reference breaks the
    speculative run's way). Anything else fails."""
    want = tokens(plain)
    n = next((i for i, (g, w) in enumerate(zip(got, want)) if g != w), min(len(got), len(want)))
    if n < len(want):
        top = [(float(e[0]), int(e[1])) for e in plain["meta_info"]["output_top_logprobs"][n]]
        assert len(got) > n and got[n] == top[1][1] and top[0][0] - top[1][0] <= TIE, (
            f"token {n}: speculative {got[n:n + 1]} vs greedy {want[n]}, plain top-2 {top}")
        print(f"  token {n}: a near tie in the plain run (top-2 {top[0][1]} / {top[1][1]}, margin "
              f"{top[0][0] - top[1][0]:.4f} nats); the speculative run took {got[n]}")
    return n


def _check_speculative(spec: dict, plain: dict, label: str) -> None:
    agreed = 0
    for k in range(len(PROMPTS)):
        got, want = tokens(spec["answers"][k]), tokens(plain["answers"][k])
        meta = spec["answers"][k]["meta_info"]
        n = greedy_agreement(got, plain["answers"][k])
        agreed += n
        print(f"{label} prompt {k}: {got} (without: {want}; equal for {n} of {GEN}); verify passes "
              f"{meta.get('spec_verify_ct')}, drafts accepted {meta.get('spec_num_correct_drafts')} of "
              f"{meta.get('spec_num_proposed_drafts')}")
        assert len(got) == GEN
        assert meta.get("spec_verify_ct", 0) >= 1, meta          # the verify path ran
    assert agreed >= GEN, (label, agreed)                          # not vacuous: most tokens compared
    # across the prompts drafts were both accepted (the accept path ran: fewer verify passes than
    # tokens) and rejected
    correct = sum(a["meta_info"]["spec_num_correct_drafts"] for a in spec["answers"])
    proposed = sum(a["meta_info"]["spec_num_proposed_drafts"] for a in spec["answers"])
    assert 0 < correct < proposed, (label, correct, proposed)
    # negative control: the two prompts' greedy continuations differ, so equality above means something
    assert tokens(spec["answers"][0]) != tokens(plain["answers"][1])
    print(f"{label}: ready in {spec['ready_s']:.0f} s, requests {[round(t, 1) for t in spec['request_s']]} s")


def test_mtp_pp1_gives_the_greedy_tokens_without_it(mtp_pp1, pp2):
    _check_speculative(mtp_pp1, pp2, "MTP PP=1")


def test_mtp_pp2_gives_the_greedy_tokens_without_it(mtp_pp2, pp2):
    _check_speculative(mtp_pp2, pp2, "MTP PP=2")


def test_greedy_agreement_rule():
    """The tie rule itself (no server): equal tokens pass; a flip at a near tie to the runner-up
    passes up to that token; a flip at a clear margin, or to a token outside the top 2, fails."""
    plain = {"meta_info": {
        "output_token_logprobs": [[-1.0, 5, None], [-2.0, 6, None], [-3.0, 7, None]],
        "output_top_logprobs": [[[-1.0, 5, None], [-4.0, 9, None]],
                                [[-2.0, 6, None], [-2.05, 8, None]],
                                [[-3.0, 7, None], [-3.5, 1, None]]]}}
    assert greedy_agreement([5, 6, 7], plain) == 3
    assert greedy_agreement([5, 8, 2], plain) == 1                    # 0.05-nat tie at token 1
    for bad in ([9, 6, 7], [5, 3, 7]):                                # clear margin; not the runner-up
        with pytest.raises(AssertionError):
            greedy_agreement(bad, plain)
