"""SGLang's real server on CPU on the synthetic **native** FP8/MXFP4 checkpoint, as it is (no
conversion): ``launch --gpu cpu`` adds the preset's ``[native]`` table, the routed experts take
the MXFP4 MoE (torch reference on CPU) and the dense FP8 layers the W8A16 reference
(``patches/cpu_engine.py``). Judged like the dsv4_int server (``test_cpu_server.py``)."""

from __future__ import annotations

import pytest
from helpers.cpu_server import assert_cpu_close, ids, server_env, synth

from sglang_ampere import server_probe as sp

pytestmark = [pytest.mark.slow, pytest.mark.cpu_server]


@pytest.fixture(scope="module")
def native(tmp_path_factory):
    return synth(tmp_path_factory.mktemp("cpu-serve-native"), seed=11)


def test_native_checkpoint_serves_with_reference_logprobs(native, tmp_path):
    import openai

    prompt = ids(48, seed=3)
    with sp.running_server(["--gpu", "cpu", "--", "--model-path", str(native)], tmp_path / "server.log",
                           env=server_env(), timeout=900) as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key="EMPTY", timeout=300, max_retries=0)
        model = client.models.list().data[0].id
        chat = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "Hello"}],
                                              max_tokens=4, temperature=0)
        assert chat.usage.completion_tokens >= 1
        answer = sp.generate(url, prompt, max_new_tokens=4)
    log = (tmp_path / "server.log").read_text(errors="replace")
    assert "[native]" in log            # the launcher added the preset's native table
    out = sp.output_tokens(answer)
    full = prompt + [t for t, _ in out]
    ref, floor = sp.reference_logprobs(native, full, tmp_path / "ref")
    got = sp.prompt_logprobs(answer) + [lp for _, lp in out]
    mean, _, _ = sp.judge_logprobs(got, ref, floor)
    assert_cpu_close(mean, floor)          # before the MoE routed-scaling fix: 4.4 x the floor
    with pytest.raises(sp.LogprobMismatch):      # negative control: one position off
        sp.judge_logprobs(got[1:] + got[:1], ref, floor)
