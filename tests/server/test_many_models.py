"""Two real models of two architectures behind one server, with room for one in memory.

The embedded Gemma 3 270M ("default") and SmolLM2-135M-Instruct ("smollm2",
llama architecture, ChatML template) are registered; ``max_loaded_models=1``
makes every switch an unload and a load. What must hold: each request gets
the tokens its model gives alone, whatever was loaded before and whatever
runs beside it; ``/api/ps`` shows what is in memory; a conversation whose
model was unloaded goes on from its cached rows; ``keep_alive`` unloads as
Ollama defines it. The official ``openai`` and ``ollama`` clients drive it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import httpx
import ollama
import openai
import pytest

import kvllama
from kvllama.models.smollm2 import smollm2_model_path
from kvllama.server import ServerConfig, ServerThread, create_app

MODELS = ("default", "smollm2")
LOAD = {"n_seq_max": 4, "n_ctx": 4096, "n_threads": 1}
QUESTIONS = ["What is the capital of France?", "Name a primary colour.", "What is 2 + 2?",
             "Which planet is the largest?"]


@dataclass(frozen=True)
class TwoModels:
    url: str
    engine: kvllama.Engine
    oai: openai.OpenAI


@pytest.fixture(scope="module")
def two(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TwoModels]:
    shm = tmp_path_factory.mktemp("shm")
    cache = kvllama.CacheConfig(shm_dir=str(shm), ram_bytes=256 << 20, shm_bytes=256 << 20)
    with kvllama.Engine(cache=cache, max_loaded_models=1, keep_alive=-1) as engine:
        engine.register_model("default", None, **LOAD)
        engine.register_model("smollm2", smollm2_model_path(), **LOAD)
        app = create_app(engine, ServerConfig(max_tokens_limit=256))
        with ServerThread(app) as url, openai.OpenAI(base_url=f"{url}/v1", api_key="-", max_retries=0) as oai:
            yield TwoModels(url, engine, oai)


def ask(two: TwoModels, model: str, question: str, **extra: object) -> str:
    r = two.oai.chat.completions.create(model=model, messages=[{"role": "user", "content": question}],
                                        max_tokens=12, temperature=0, **extra)  # type: ignore[call-overload]
    return str(r.choices[0].message.content)


def in_memory(two: TwoModels) -> list[str]:
    return [m["name"] for m in httpx.get(f"{two.url}/api/ps").json()["models"]]


def wait_until(condition: Callable[[], bool], limit: float = 60.0) -> None:
    deadline = time.monotonic() + limit
    while not condition():
        assert time.monotonic() < deadline, "the condition never held"
        time.sleep(0.05)


@pytest.fixture(scope="module")
def alone(two: TwoModels) -> dict[tuple[str, str], str]:
    """Each model's reply to each question, asked one at a time, each model loaded fresh."""
    out = {}
    for model in MODELS:
        for q in QUESTIONS:
            out[model, q] = ask(two, model, q)
    return out


def test_both_models_are_listed_and_alternate_within_one_loaded_model(two, alone):
    names = {m.id for m in two.oai.models.list()}
    assert names == set(MODELS)
    assert alone["default", QUESTIONS[0]] != alone["smollm2", QUESTIONS[0]]  # two different models
    for model in ("smollm2", "default", "smollm2", "default"):
        assert ask(two, model, QUESTIONS[1]) == alone[model, QUESTIONS[1]]
        assert in_memory(two) == [f"{model}:latest"]


def test_eight_at_once_over_both_models_each_get_their_models_tokens(two, alone):
    jobs = [(model, q) for model in MODELS for q in QUESTIONS]
    got: dict[tuple[str, str], str] = {}
    errors: list[BaseException] = []

    def run(model: str, q: str) -> None:
        try:
            got[model, q] = ask(two, model, q)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=job) for job in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert errors == [] and got == {job: alone[job] for job in jobs}
    assert len(in_memory(two)) == 1


def test_a_conversation_goes_on_warm_and_exact_after_its_model_was_unloaded(two):
    history = [{"role": "user", "content": "Tell me about the sea. " * 40}]
    first = two.oai.chat.completions.create(model="smollm2", messages=history, max_tokens=8, temperature=0)
    history += [{"role": "assistant", "content": first.choices[0].message.content or ""},
                {"role": "user", "content": "And the mountains?"}]
    r = httpx.post(f"{two.url}/api/generate", json={"model": "smollm2", "keep_alive": 0})
    assert r.json()["done_reason"] == "unload" and in_memory(two) == []
    warm = two.oai.chat.completions.create(model="smollm2", messages=history, max_tokens=8, temperature=0)
    details = warm.usage.prompt_tokens_details if warm.usage else None
    assert details is not None and (details.cached_tokens or 0) > 0
    cold = two.oai.chat.completions.create(model="smollm2", messages=history, max_tokens=8, temperature=0,
                                           extra_body={"cache_salt": "cold-run"})
    cold_details = cold.usage.prompt_tokens_details if cold.usage else None
    assert cold_details is not None and not cold_details.cached_tokens
    assert warm.choices[0].message.content == cold.choices[0].message.content


def test_keep_alive_zero_and_a_short_keep_alive_unload(two):
    ask(two, "default", QUESTIONS[0], extra_body={"keep_alive": 0})
    wait_until(lambda: in_memory(two) == [])
    ask(two, "smollm2", QUESTIONS[0], extra_body={"keep_alive": "1s"})
    (row,) = httpx.get(f"{two.url}/api/ps").json()["models"]
    assert row["name"] == "smollm2:latest" and not row["expires_at"].startswith("2318")
    wait_until(lambda: in_memory(two) == [])


def test_the_ollama_client_lists_shows_and_runs_both(two, alone):
    with ollama.Client(host=two.url) as client:
        assert {m.model for m in client.list().models} == {f"{m}:latest" for m in MODELS}
        for model in MODELS:
            shown = client.show(model)
            assert shown.details.family == ("gemma3" if model == "default" else "llama")
            chat = client.chat(model=model, messages=[{"role": "user", "content": QUESTIONS[2]}],
                               options={"num_predict": 12, "temperature": 0})
            assert chat.message.content == alone[model, QUESTIONS[2]]
            assert [m.model for m in client.ps().models] == [f"{model}:latest"]
            generated = client.generate(model=model, prompt="The sky is", raw=True,
                                        options={"num_predict": 4, "temperature": 0})
            assert generated.done and generated.eval_count == 4

