"""The official ollama client against a real server on 127.0.0.1 with the real model."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator

import ollama
import pytest

MODEL = "gemma"  # the served name (tests/server/conftest.py)
GREEDY = {"num_predict": 8, "temperature": 0}
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def client(served) -> Iterator[ollama.Client]:
    with ollama.Client(host=served.url) as c:
        yield c


def test_generate_streamed_equals_non_streamed(client):
    prompt = "The days of the week are Monday, Tuesday,"
    whole = client.generate(model=MODEL, prompt=prompt, raw=True, options=GREEDY)
    assert whole.done and whole.done_reason == "length" and whole.eval_count == 8
    assert whole.response and whole.prompt_eval_count and whole.total_duration and whole.eval_duration
    parts = list(client.generate(model=f"{MODEL}:latest", prompt=prompt, raw=True, options=GREEDY,
                                 stream=True))
    assert all(not p.done for p in parts[:-1]) and parts[-1].done and len(parts) > 2
    assert "".join(p.response or "" for p in parts) == whole.response
    assert parts[-1].context == whole.context and parts[-1].model == f"{MODEL}:latest"


def test_chat_replies_and_stops_at_the_turn_boundary(client):
    whole = client.chat(model=MODEL, messages=QUESTION, options=GREEDY)
    reply = whole.message.content
    assert whole.message.role == "assistant" and reply and "User:" not in reply
    parts = list(client.chat(model=MODEL, messages=QUESTION, options=GREEDY, stream=True))
    assert "".join(p.message.content or "" for p in parts) == reply
    assert parts[-1].done_reason == whole.done_reason and parts[-1].eval_count == whole.eval_count


def test_chat_format_schema_gives_matching_json(client):
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]}
    r = client.chat(model=MODEL, messages=[{"role": "user", "content": "Is water wet? Answer as JSON."}],
                    format=schema, options={"num_predict": 12, "temperature": 0})
    assert r.done_reason == "stop", r.message.content
    answer = json.loads(r.message.content)
    assert set(answer) == {"ok"} and isinstance(answer["ok"], bool)


def test_tags_show_and_embed(client, served):
    names = [m.model for m in client.list().models]
    assert f"{MODEL}:latest" in names
    info = served.engine.model_info(MODEL)
    shown = client.show(MODEL)
    assert shown.details.family == info.architecture and shown.details.format == "gguf"
    assert shown.modelinfo[f"{info.architecture}.context_length"] == info.n_ctx_train
    assert shown.details.quantization_level == info.quant
    vectors = client.embed(model=MODEL, input=["hello world", "goodbye"]).embeddings
    assert len(vectors) == 2 and len(vectors[0]) == len(served.engine.embed(MODEL, "x")[0])
    assert all(math.isclose(sum(x * x for x in v), 1.0, rel_tol=1e-6) for v in vectors)


def test_bad_requests_raise_response_errors(client):
    with pytest.raises(ollama.ResponseError) as caught:
        client.chat(model="no-such-model", messages=QUESTION)
    assert caught.value.status_code == 404 and "no-such-model" in caught.value.error
    with pytest.raises(ollama.ResponseError) as caught:
        client.generate(model=MODEL, prompt="hi", options={"temperature": 500, "num_predict": 4})
    assert caught.value.status_code == 400 and "temperature" in caught.value.error
