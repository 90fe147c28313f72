"""The official openai SDK against a real server on 127.0.0.1 with the real model."""

from __future__ import annotations

import json

import openai
import pytest

MODEL = "gemma"  # the served name (tests/server/conftest.py)

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


def test_chat_streamed_equals_non_streamed(oai):
    whole = oai.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=12, temperature=0)
    reply = whole.choices[0].message.content
    assert reply and whole.choices[0].finish_reason in ("stop", "length")
    # The plain-template fallback stops at the turn boundary and never shows it.
    assert "User:" not in reply
    stream = oai.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=12, temperature=0,
                                         stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == reply
    assert chunks[-1].usage is not None and chunks[-1].usage.model_dump() == whole.usage.model_dump()
    assert whole.usage.prompt_tokens_details.cached_tokens == 0
    assert whole.usage.total_tokens == whole.usage.prompt_tokens + whole.usage.completion_tokens


def test_completion_with_a_stop_sequence(oai):
    prompt = "The days of the week are Monday, Tuesday,"
    full = oai.completions.create(model=MODEL, prompt=prompt, max_tokens=8, temperature=0)
    text = full.choices[0].text
    assert full.choices[0].finish_reason == "length" and full.usage.completion_tokens == 8
    stop = text.strip().split()[1][:3] if len(text.split()) > 1 else text[2:4]
    cut = oai.completions.create(model=MODEL, prompt=prompt, max_tokens=8, temperature=0, stop=[stop])
    assert cut.choices[0].text == text[: text.index(stop)]
    assert cut.choices[0].finish_reason == "stop"
    streamed = oai.completions.create(model=MODEL, prompt=prompt, max_tokens=8, temperature=0, stop=stop,
                                      stream=True)
    assert "".join(c.choices[0].text for c in streamed) == cut.choices[0].text


def test_json_schema_response_format_gives_valid_json(oai):
    schema = {"type": "object", "required": ["name", "age", "cute"], "properties": {
        "name": {"type": "string", "maxLength": 12}, "age": {"type": "integer"}, "cute": {"type": "boolean"}}}
    r = oai.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Describe a cat as JSON."}], max_tokens=40,
        temperature=0, seed=1, response_format={"type": "json_schema", "json_schema": {"name": "cat",
                                                                                     "schema": schema}})
    assert r.choices[0].finish_reason == "stop"
    cat = json.loads(r.choices[0].message.content)
    assert set(cat) == {"name", "age", "cute"}
    assert isinstance(cat["name"], str) and isinstance(cat["age"], int) and isinstance(cat["cute"], bool)


def test_embeddings_float_and_base64_agree(oai, served):
    default = oai.embeddings.create(model=MODEL, input=["hello world", "goodbye"])  # SDK asks for base64
    floats = oai.embeddings.create(model=MODEL, input=["hello world", "goodbye"], encoding_format="float")
    assert [d.index for d in default.data] == [0, 1]
    n_embd = len(served.engine.embed(MODEL, "x")[0])
    assert len(default.data[0].embedding) == len(floats.data[0].embedding) == n_embd
    assert default.data[1].embedding == pytest.approx(floats.data[1].embedding, rel=1e-5, abs=1e-6)
    assert floats.usage.prompt_tokens > 0


def test_models_list(oai):
    assert sorted(m.id for m in oai.models.list()) == [MODEL, "gemma-agent"]
    assert oai.models.retrieve(MODEL).owned_by == "kvllama"


def test_errors_map_to_sdk_exceptions_and_the_server_keeps_serving(oai):
    with pytest.raises(openai.BadRequestError) as over:
        oai.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "word " * 2500}],
                                    max_tokens=4)
    assert "2048" in over.value.message and "prompt is" in over.value.message
    with pytest.raises(openai.NotFoundError):
        oai.chat.completions.create(model="gpt-none", messages=QUESTION, max_tokens=4)
    with pytest.raises(openai.BadRequestError, match="1024"):
        oai.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=5000)
    with pytest.raises(openai.BadRequestError, match="n"):
        oai.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=4, n=17)
    ok = oai.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=2, temperature=0)
    assert ok.usage.completion_tokens >= 1


# --- the fields benchmark tools and clients send: logprobs, n, logit_bias, ignore_eos, echo --------

def test_logprobs_are_the_models_and_greedy_picks_the_top_one(oai):
    r = oai.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=6, temperature=0,
                                    logprobs=True, top_logprobs=3)
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens
    for entry in content:
        tops = entry.top_logprobs
        assert len(tops) == 3 and all(t.logprob <= 0 for t in tops) and entry.logprob <= 0
        assert tops[0].logprob >= tops[1].logprob >= tops[2].logprob
        assert entry.token == tops[0].token and entry.logprob == pytest.approx(tops[0].logprob)
    assert sum(2.718281828 ** t.logprob for t in content[0].top_logprobs) <= 1.0 + 1e-6


def test_n_choices_equal_the_same_seeds_alone(oai):
    prompt = "Write one word about the sea:"
    many = oai.completions.create(model=MODEL, prompt=prompt, max_tokens=6, temperature=0.9, seed=21, n=3)
    assert [c.index for c in many.choices] == [0, 1, 2]
    for i, choice in enumerate(many.choices):
        alone = oai.completions.create(model=MODEL, prompt=prompt, max_tokens=6, temperature=0.9, seed=21 + i)
        assert choice.text == alone.choices[0].text


def test_logit_bias_bans_the_greedy_token_and_ignore_eos_runs_to_max_tokens(oai, served):
    prompt = "The capital of France is"
    first = oai.completions.create(model=MODEL, prompt=prompt, max_tokens=1, temperature=0)
    greedy = served.engine.complete(MODEL, prompt, max_tokens=1, temperature=0).generated_tokens[0]
    banned = oai.completions.create(model=MODEL, prompt=prompt, max_tokens=1, temperature=0,
                                    logit_bias={str(greedy): -100})
    assert banned.choices[0].text != first.choices[0].text
    boosted = oai.completions.create(model=MODEL, prompt=prompt, max_tokens=1, temperature=0,
                                     logit_bias={str(greedy): -100, "1000": 100})
    assert boosted.choices[0].text == served.engine.detokenize(MODEL, [1000])
    long = oai.completions.create(model=MODEL, prompt="Say yes.", max_tokens=24, temperature=0,
                                  extra_body={"ignore_eos": True})
    assert long.usage.completion_tokens == 24 and long.choices[0].finish_reason == "length"


def test_echo_returns_prompt_and_completion(oai):
    r = oai.completions.create(model=MODEL, prompt="One, two,", max_tokens=4, temperature=0, echo=True)
    assert r.choices[0].text.startswith("One, two,") and len(r.choices[0].text) > len("One, two,")
