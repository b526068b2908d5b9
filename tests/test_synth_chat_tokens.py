"""The synth tokenizer carries DeepSeek-V4's chat tokens, and SGLang's own ``dsv4`` chat encoding
accepts it (issue 21 item 2).

SGLang 0.5.23 forces the ``dsv4`` chat encoder for any ``DeepseekV4*`` architecture
(entrypoints/openai/chat_encoding.py:45). At HTTP start-up ``OpenAIServingChat`` builds its
encoding adapter (serving_chat.py:451 -> chat_encoding_adapters.py:275), which encodes one chat
at boot through deepseek-recipe (parser/deepseek_recipe_renderer.py:158); per request it calls the
adapter's ``encode_messages`` (serving_chat.py:740). A tokenizer without the chat tokens in its
added vocabulary fails the boot encode, and the server exits. These tests take that same path on
the tokenizer ``synth`` writes, loaded with SGLang's own loader.
"""

from __future__ import annotations

import json
import shutil
from types import SimpleNamespace

import pytest

from sglang_ampere import synth


def _hf_config(ckpt):
    cfg = json.loads((ckpt / "config.json").read_text())
    return SimpleNamespace(architectures=cfg["architectures"], model_type=cfg["model_type"])


def _load(folder):
    """The tokenizer as SGLang's TokenizerManager loads it (tokenizer_manager.py:642)."""
    from sglang.srt.utils.hf_transformers_utils import get_tokenizer

    return get_tokenizer(str(folder))


def _build_adapter(ckpt, tokenizer):
    """What ``OpenAIServingChat.__init__`` does (serving_chat.py:449-451, 605-629): resolve the spec
    from the checkpoint's architecture, then build the adapter, which encodes a chat at boot."""
    from sglang.srt.entrypoints.openai import chat_encoding
    from sglang.srt.entrypoints.openai import chat_encoding_adapters as A

    hf_config = _hf_config(ckpt)
    spec = chat_encoding.resolve_chat_encoding_spec(hf_config=hf_config, tokenizer=tokenizer)
    assert spec == "dsv4" and A.has_chat_encoding_adapter(spec)
    hooks = A.ChatOutputHooks(
        thinking_requested=lambda r: False,
        tool_call_parsing_active=lambda r: False,
        history_tool_calls_count=lambda r: 0,
        tool_call_id=lambda item, i: f"call_{i}",
    )
    return A.build_chat_encoding_adapter(A.ChatEncodingAdapterContext(
        chat_encoding_spec=spec, tokenizer=tokenizer, reasoning_parser=None, tool_call_parser=None,
        chat_hooks=hooks, hf_config=hf_config, model_path=str(ckpt), revision=None))


def _encode(adapter, messages, thinking, **request_fields):
    """A chat request as ``serving_chat._encode_messages`` hands it over (serving_chat.py:740)."""
    from sglang.srt.entrypoints.openai.protocol import ChatCompletionRequest

    request = ChatCompletionRequest(model="synth", messages=messages,
                                    chat_template_kwargs={"thinking": thinking}, **request_fields)
    dumped = [m.model_dump() for m in request.messages]
    return adapter.encode_messages(messages=dumped, request=request, tools=None, thinking=thinking,
                                   image_data=[])


@pytest.fixture(scope="module")
def adapter(synth_ckpt):
    tokenizer = _load(synth_ckpt)
    return tokenizer, _build_adapter(synth_ckpt, tokenizer)


def _ids(tokenizer, text):
    return tokenizer.encode(text, add_special_tokens=False)


CHAT = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "hi"},
    {"role": "assistant", "content": "hello"},
    {"role": "user", "content": "again"},
]


def test_chat_tokens_are_added_tokens_right_after_the_bytes(synth_ckpt):
    """Every chat token is one added id, in CHAT_TOKENS order from 259; the vocab covers them all."""
    tok = _load(synth_ckpt)
    added = tok.get_added_vocab()
    want = {t: synth.BYTE_IDS.stop + i for i, t in enumerate(synth.CHAT_TOKENS)}
    assert {t: added.get(t) for t in synth.CHAT_TOKENS} == want
    assert synth.BYTE_IDS.stop == 259 and synth.TOKENIZER_IDS == 259 + len(synth.CHAT_TOKENS) == len(tok)
    assert all(_ids(tok, f"a{t}b") == [*_ids(tok, "a"), i, *_ids(tok, "b")] for t, i in want.items())
    cfg = json.loads((synth_ckpt / "config.json").read_text())
    assert cfg["vocab_size"] >= synth.TOKENIZER_IDS
    # negative control: a plain string is not one id
    assert len(_ids(tok, "<｜Userx｜>")) > 1


def test_chat_tokens_are_what_sglang_dsv4_encoder_uses():
    """CHAT_TOKENS is exactly recipe's special tokens as SGLang configures them (renderer.py:113),
    less BOS/EOS, plus SGLang's task tokens (renderer.py:24); so a new token in either fails here."""
    import deepseek_recipe as recipe
    from sglang.srt.parser import deepseek_recipe_renderer as R

    configured = recipe.SpecialTokens(image=R.IMAGE_TOKEN)
    kinds = [getattr(recipe.SpecialToken, n) for n in dir(recipe.SpecialToken)
             if isinstance(getattr(recipe.SpecialToken, n), recipe.SpecialToken)]
    spelled = {configured.token(k) for k in kinds}
    assert len(kinds) == 18 and {synth.BOS, synth.EOS} <= spelled
    sglang_set = (spelled - {synth.BOS, synth.EOS}) | set(R.TASK_TOKENS.values())
    assert set(synth.CHAT_TOKENS) == sglang_set and len(synth.CHAT_TOKENS) == len(sglang_set)
    assert (synth.USER, synth.ASSISTANT, synth.THINK_START, synth.THINK_END) == (
        configured.token(recipe.SpecialToken.User), R.ASSISTANT_TOKEN, R.THINK_START_TOKEN, R.THINK_END_TOKEN)
    # negative control: the comparison notices a missing token
    assert set(synth.CHAT_TOKENS[:-1]) != sglang_set


@pytest.mark.parametrize("thinking", [False, True])
def test_sglang_encodes_a_chat_with_single_chat_token_ids(adapter, thinking):
    """system + user + assistant + user through the server's per-request path: the role and think
    markers are single added ids, never byte-split text; the tail is the generation header."""
    tok, a = adapter
    ids = _encode(a, CHAT, thinking)
    tid = tok.convert_tokens_to_ids
    user, assistant, think, unthink = tid([synth.USER, synth.ASSISTANT, synth.THINK_START, synth.THINK_END])
    tail = [*_ids(tok, "Be brief."), user, *_ids(tok, "hi"), assistant, unthink, *_ids(tok, "hello"),
            tok.eos_token_id, user, *_ids(tok, "again"), assistant, think if thinking else unthink]
    assert ids[0] == tok.bos_token_id and ids[-len(tail):] == tail
    if not thinking:
        assert ids == [tok.bos_token_id, *tail]
        # the checkpoint's own chat template (transformers' path) renders the same ids
        text = tok.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True, thinking=False)
        assert _ids(tok, text) == ids
    # each chat token in the rendered text is its one id (none came out as byte-split text)
    text = tok.decode(ids)
    assert all(text.count(t) == ids.count(tid(t)) for t in synth.CHAT_TOKENS) and ids.count(user) == 2


def test_sglang_task_tokens_resolve(adapter):
    """A quick-instruction task replaces the generation header with its own token id
    (renderer.py _attach_task, which looks the token up with token_to_id)."""
    tok, a = adapter
    ids = _encode(a, CHAT, False, task="query")
    assert ids[-1] == tok.convert_tokens_to_ids("<｜query｜>") and None not in ids
    ids = _encode(a, CHAT, True, task="action")
    assert ids[-3:] == tok.convert_tokens_to_ids([synth.ASSISTANT, synth.THINK_START, "<｜action｜>"])


def test_old_tokenizer_fails_sglang_at_start_up(synth_ckpt, tmp_path):
    """Negative control: the old token set (BOS/EOS/PAD only) fails the same start-up path with
    SGLang's error, so the tests above do check the chat tokens."""
    for f in ("config.json", "tokenizer_config.json"):
        shutil.copy(synth_ckpt / f, tmp_path / f)
    tj = json.loads((synth_ckpt / "tokenizer.json").read_text())
    tj["added_tokens"] = [t for t in tj["added_tokens"] if t["content"] in synth.SPECIAL_TOKENS]
    tj["model"]["vocab"] = {t: i for t, i in tj["model"]["vocab"].items() if i < synth.BYTE_IDS.stop}
    (tmp_path / "tokenizer.json").write_text(json.dumps(tj, ensure_ascii=False))
    with pytest.raises(RuntimeError, match='special token "<｜User｜>" is not in the added vocabulary'):
        _build_adapter(tmp_path, _load(tmp_path))
