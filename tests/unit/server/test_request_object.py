"""One request object from the edge to the loop: every API family builds the same GenerationRequest.

A body becomes a :class:`~kvllama.request.GenerationRequest` in one call
(``to_request(edge)``), with no server running; the Python keyword API builds
the same object. The same conversation and options sent through OpenAI,
Anthropic and Ollama bodies must queue the same tokens with the same
sampling, and a value each family can carry is refused with the same words.
"""

from __future__ import annotations

from typing import Any

import pytest

from kvllama.kvcache.errors import InvalidCacheSaltError
from kvllama.request import ChatInput, GenerationRequest
from kvllama.server.anthropic.schemas import MessagesRequest
from kvllama.server.config import ServerConfig
from kvllama.server.edge import Edge
from kvllama.server.ollama.schemas import ChatRequest as OllamaChat
from kvllama.server.ollama.schemas import GenerateRequest as OllamaGenerate
from kvllama.server.openai.schemas import ChatCompletionRequest, CompletionRequest

SYSTEM = "Answer in one word."
QUESTION = "Capital of France?"
OPTIONS = {"max_tokens": 32, "temperature": 0.5, "top_p": 0.9, "top_k": 20, "seed": 7, "stop": ["END"]}
EDGE = Edge(ServerConfig(), session_header="conv-1")


def openai_body() -> dict[str, Any]:
    return {"model": "s", "messages": [{"role": "system", "content": SYSTEM},
                                       {"role": "user", "content": QUESTION}], **OPTIONS}


def anthropic_body() -> dict[str, Any]:
    o = OPTIONS
    return {"model": "s", "system": SYSTEM, "messages": [{"role": "user", "content": QUESTION}],
            "max_tokens": o["max_tokens"], "temperature": o["temperature"], "top_p": o["top_p"],
            "top_k": o["top_k"], "seed": o["seed"], "stop_sequences": o["stop"]}


def ollama_body() -> dict[str, Any]:
    o = OPTIONS
    return {"model": "s", "messages": [{"role": "system", "content": SYSTEM},
                                       {"role": "user", "content": QUESTION}],
            "options": {"num_predict": o["max_tokens"], "temperature": o["temperature"], "top_p": o["top_p"],
                        "top_k": o["top_k"], "seed": o["seed"], "stop": o["stop"]}}


def test_an_openai_chat_body_builds_the_request_the_python_api_builds():
    built = ChatCompletionRequest.model_validate(openai_body()).to_request(EDGE)
    chat = ChatInput.of(openai_body()["messages"])
    python = GenerationRequest.build(chat=chat, session_id="conv-1", **OPTIONS)
    assert built == python
    assert built.sampling.stop == ("END",) and built.options.session_id == "conv-1"


def test_every_family_queues_the_same_tokens_with_the_same_sampling(stub_engine):
    engine, _ = stub_engine()
    requests = {
        "openai": ChatCompletionRequest.model_validate(openai_body()).to_request(EDGE),
        "anthropic": MessagesRequest.model_validate(anthropic_body()).to_request(EDGE),
        "ollama": OllamaChat.model_validate(ollama_body()).to_request(EDGE),
    }
    resolved = {family: engine.resolve_request("s", r) for family, r in requests.items()}
    first = resolved["openai"]
    assert first.resolved and first.chat is None
    assert engine.detokenize("s", first.prompt).endswith("Assistant:")  # the stub's plain template
    for family, r in resolved.items():
        assert r.prompt == first.prompt, family
        assert r.sampling == first.sampling, family  # the template's stops added after the client's
        assert r.options.session_id == "conv-1", family
    assert first.sampling.stop == ("END", "\nUser:", "\nAssistant:")


def test_the_python_api_hands_the_engine_that_same_object(stub_engine, monkeypatch):
    engine, _ = stub_engine()
    seen: list[GenerationRequest] = []
    start = engine.submissions.start
    monkeypatch.setattr(engine.submissions, "start", lambda model_id, r: seen.append(r) or start(model_id, r))
    engine.chat("s", openai_body()["messages"], session_id="conv-1", **OPTIONS)
    assert seen == [ChatCompletionRequest.model_validate(openai_body()).to_request(EDGE)]


def test_completions_and_ollama_generate_build_prompt_requests():
    completion = CompletionRequest.model_validate({"model": "s", "prompt": "Once", "max_tokens": 5,
                                                   "logprobs": 2}).to_request(Edge())
    assert completion == GenerationRequest.build("Once", max_tokens=5, logprobs=2)
    raw = OllamaGenerate.model_validate({"model": "s", "prompt": "Once", "raw": True, "context": [1, 2],
                                         "options": {"num_predict": 5}}).to_request(Edge())
    assert raw == GenerationRequest.build("Once", context=[1, 2], max_tokens=5)
    body = {"model": "s", "prompt": "Once", "system": SYSTEM}
    templated = OllamaGenerate.model_validate(body).to_request(Edge())
    assert templated.chat == ChatInput.of([{"role": "user", "content": "Once"}], system=SYSTEM)


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions", "/v1/messages"])
def test_a_bad_cache_salt_is_refused_with_the_cache_rule_s_words_everywhere(client, path):
    with pytest.raises(InvalidCacheSaltError) as python:
        GenerationRequest.build("x", cache_salt="a b")
    body: dict[str, Any] = {"model": "s", "max_tokens": 4, "cache_salt": "a b"}
    chat = {"messages": [{"role": "user", "content": "x"}]}
    body.update({"prompt": "x"} if path == "/v1/completions" else chat)
    r = client.post(path, json=body)
    assert r.status_code == 400
    assert str(python.value) in r.text


def test_one_session_id_rule_for_the_body_the_header_and_python(client):
    long = "s" * 257
    with pytest.raises(ValueError, match="1 to 256 printable"):
        GenerationRequest.build("x", session_id=long)
    chat = {"model": "s", "max_tokens": 4, "messages": [{"role": "user", "content": "x"}]}
    for r in (client.post("/v1/chat/completions", json={**chat, "session_id": long}),
              client.post("/v1/chat/completions", json=chat, headers={"x-session-id": long})):
        assert r.status_code == 400 and "1 to 256 printable" in r.text
