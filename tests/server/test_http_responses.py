"""The Responses API through the official openai SDK, on the real model and a real server.

"gemma" is the default model (no chat template: the plain fallback), "agent" the same weights
with Qwen-style tool-call markers, so a call can be forced with ``tool_choice``. A second turn
with ``previous_response_id`` continues the stored transcript's ids: its prompt is the first
turn's prompt, the ids it sampled and the new message's, and its reply equals a cache-less
engine's greedy or seeded run of exactly those ids.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

import kvllama
from kvllama.server import ServerConfig, ServerThread, create_app
from kvllama.server.responses.store import ResponseStore
from kvllama.server.sse import parse_frames

MODEL, AGENT = "gemma", "agent"
OPTIONS = {"n_seq_max": 2, "n_ctx": 4096, "n_threads": 1}
WEATHER = {"type": "function", "name": "get_weather", "description": "The weather in a city.",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}


class Served:
    def __init__(self, url: str, store: ResponseStore) -> None:
        self.url, self.store = url, store


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    folder = tmp_path_factory.mktemp("responses")
    with kvllama.Engine() as engine:
        engine.load_model(MODEL, **OPTIONS)
        engine.load_model(AGENT, markers="qwen3", **OPTIONS)
        app = create_app(engine, ServerConfig(max_tokens_limit=512, responses_dir=str(folder)))
        with ServerThread(app) as url:
            yield Served(url, app.state.kvllama.responses)


@pytest.fixture(scope="module")
def client(served: Served) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{served.url}/v1", api_key="unused", max_retries=0) as c:
        yield c


@pytest.fixture(scope="module")
def cold() -> Iterator[kvllama.Engine]:
    with kvllama.Engine(cache=None) as engine:
        engine.load_model(MODEL, keep_finished=False, **OPTIONS)
        yield engine


def test_create_retrieve_input_items_delete(client, served):
    r = client.responses.create(model=MODEL, input="Write one sentence about the sea.", max_output_tokens=12,
                                temperature=0, metadata={"case": "basic"})
    assert r.status in ("completed", "incomplete") and r.object == "response" and r.model == MODEL
    assert r.output[0].type == "message" and r.output_text == r.output[0].content[0].text  # type: ignore[union-attr]
    assert r.usage is not None and r.usage.input_tokens > 0 and r.metadata == {"case": "basic"}
    again = client.responses.retrieve(r.id)
    assert again.model_dump() == r.model_dump()
    items = client.responses.input_items.list(r.id)
    assert [i.type for i in items.data] == ["message"] and items.data[0].role == "user"  # type: ignore[union-attr]
    # Another tenant's id is unknown; the owner's is found with its salt.
    salted = client.responses.create(model=MODEL, input="Hello", max_output_tokens=2,
                                     extra_body={"cache_salt": "t1"})
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(salted.id)
    assert client.responses.retrieve(salted.id, extra_query={"cache_salt": "t1"}).id == salted.id
    client.responses.delete(r.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(r.id)


@pytest.mark.parametrize("sampling", [{"temperature": 0.0}, {"temperature": 0.8, "seed": 7}],
                         ids=["greedy", "seeded"])
def test_previous_response_id_continues_the_stored_ids_warm_and_exactly(client, served, cold, sampling):
    extra = {"seed": sampling["seed"]} if "seed" in sampling else {}
    colours = ("red", "gold", "violet") * 8
    notes = " ".join(f"note {i}: the evening sky turned {c}." for i, c in enumerate(colours))
    temperature = sampling["temperature"]
    first = client.responses.create(model=MODEL, input=f"{notes} Name three colours of the evening sky.",
                                    max_output_tokens=12, temperature=temperature, extra_body=extra)
    second = client.responses.create(model=MODEL, input="Which of them is the warmest?",
                                     previous_response_id=first.id, max_output_tokens=16,
                                     temperature=temperature, extra_body=extra)
    assert second.usage is not None and first.usage is not None
    assert second.usage.input_tokens_details.cached_tokens >= first.usage.input_tokens - 8
    stored1, stored2 = served.store.get(None, first.id), served.store.get(None, second.id)
    assert stored1 is not None and stored2 is not None and stored1.transcript
    n_prompt = second.usage.input_tokens
    prompt, reply = stored2.transcript[:n_prompt], stored2.transcript[n_prompt:]
    assert prompt[: len(stored1.transcript)] == stored1.transcript  # the first turn's ids, as sampled
    # The plain template's stops, as the server added them (the default model has no chat template).
    expected = cold.complete(MODEL, prompt, max_tokens=16, stop=["\nUser:", "\nAssistant:"], **sampling)
    assert list(expected.generated_tokens)[: len(reply)] == reply
    assert second.output_text == expected.reply


def test_streamed_events_come_in_the_documented_order(client, served):
    body = {"model": MODEL, "input": "Count from one to five:", "max_output_tokens": 10, "temperature": 0,
            "stream": True}
    r = httpx.post(f"{served.url}/v1/responses", json=body, timeout=60)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = [json.loads(data) for _name, data in parse_frames(r.text)]
    kinds = [e["type"] for e in events]
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    assert kinds[:5] == ["response.created", "response.in_progress", "response.output_item.added",
                         "response.content_part.added", "response.output_text.delta"]
    deltas = [e for e in events if e["type"] == "response.output_text.delta"]
    closing = ["response.output_text.done", "response.content_part.done", "response.output_item.done"]
    assert kinds[-4:-1] == closing
    assert kinds[-1] in ("response.completed", "response.incomplete")
    assert set(kinds[5:-4]) == {"response.output_text.delta"}
    final = events[-1]["response"]
    text = "".join(d["delta"] for d in deltas)
    assert final["output"][0]["content"][0]["text"] == text == events[-4]["text"]
    assert {e["item_id"] for e in deltas} == {final["output"][0]["id"]}
    whole = client.responses.create(model=MODEL, input="Count from one to five:", max_output_tokens=10,
                                    temperature=0)
    assert whole.output_text == text
    with client.responses.stream(model=MODEL, input="Count from one to five:", max_output_tokens=10,
                                 temperature=0) as stream:
        helper = stream.get_final_response()
    assert helper.output_text == text


def test_a_forced_tool_call_and_its_output_round_trip(client):
    trip = ("I am planning a long weekend trip with my family: we want to walk by the river, visit two "
            "museums and eat outside if we can. What is the weather in Paris?")
    first = client.responses.create(model=AGENT, input=trip, tools=[WEATHER],  # type: ignore[list-item]
                                    tool_choice="required", max_output_tokens=64, temperature=0)
    calls = [o for o in first.output if o.type == "function_call"]
    assert len(calls) == 1 and calls[0].name == "get_weather"
    assert set(json.loads(calls[0].arguments)) == {"city"}
    answer = client.responses.create(
        model=AGENT, previous_response_id=first.id, tools=[WEATHER], max_output_tokens=12, temperature=0,  # type: ignore[list-item]
        input=[{"type": "function_call_output", "call_id": calls[0].call_id, "output": "Sunny, 24 C"}])
    assert answer.status in ("completed", "incomplete") and answer.usage is not None
    assert answer.usage.input_tokens_details.cached_tokens > 0
    streamed: list[str] = []
    with client.responses.stream(model=AGENT, input="Weather in Oslo?", tools=[WEATHER],  # type: ignore[list-item]
                                 tool_choice={"type": "function", "name": "get_weather"},
                                 max_output_tokens=64,
                                 temperature=0) as stream:
        for event in stream:
            streamed.append(event.type)
        final = stream.get_final_response()
    arguments = {"response.function_call_arguments.delta", "response.function_call_arguments.done"}
    assert arguments <= set(streamed)
    assert [o.type for o in final.output] == ["function_call"]


def test_json_schema_format_gives_matching_json(client):
    schema = {"type": "object", "properties": {"colour": {"type": "string"}, "bright": {"type": "boolean"}},
              "required": ["colour", "bright"], "additionalProperties": False}
    r = client.responses.create(model=MODEL, input="Describe a colour as JSON.", max_output_tokens=40,
                                temperature=0,
                                text={"format": {"type": "json_schema", "name": "colour", "schema": schema,
                                                 "strict": True}})
    value = json.loads(r.output_text)
    assert set(value) == {"colour", "bright"} and isinstance(value["bright"], bool)


@pytest.mark.parametrize(("body", "status", "param"), [
    ({"input": [{"type": "computer_call"}]}, 400, "input[0].type"),
    ({"input": [{"role": "wizard", "content": "x"}]}, 400, "input[0].role"),
    ({"input": "x", "previous_response_id": "resp_missing"}, 404, "previous_response_id"),
    ({"input": "x", "tools": [WEATHER], "tool_choice": "required"}, 400, "tool_choice"),  # no markers
    ({"input": "x", "tools": [{"type": "web_search"}]}, 400, "tools[0]"),
    ({"input": "x", "background": True}, 400, "background"),
])
def test_bad_requests_get_the_apis_error_shape(served, body, status, param):
    r = httpx.post(f"{served.url}/v1/responses", json={"model": MODEL, "max_output_tokens": 4, **body},
                   timeout=30)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["param"] == param and error["message"] and error["type"]


def test_stored_responses_survive_a_restart(tmp_path: Path):
    with kvllama.Engine() as engine:
        engine.load_model(MODEL, **OPTIONS)
        for attempt in range(2):
            app = create_app(engine, ServerConfig(responses_dir=str(tmp_path)))
            with ServerThread(app) as url, openai.OpenAI(base_url=f"{url}/v1", api_key="x",
                                                         max_retries=0) as c:
                if attempt == 0:
                    rid = c.responses.create(model=MODEL, input="Hi there", max_output_tokens=4).id
                else:
                    assert c.responses.retrieve(rid).id == rid
                    follow = c.responses.create(model=MODEL, input="Again", previous_response_id=rid,
                                                max_output_tokens=4)
                    assert follow.previous_response_id == rid
            app.state.kvllama.responses.close()


THINK = r'root ::= "<think>" " The user wants a colour." "</think>" " Blue."'


def test_thinking_comes_back_as_a_reasoning_item(client, served):
    r = client.responses.create(model=AGENT, input="Pick a colour.", max_output_tokens=40, temperature=0,
                                extra_body={"grammar": THINK})
    assert [o.type for o in r.output] == ["reasoning", "message"]
    assert r.output[0].content[0].text.strip() == "The user wants a colour."  # type: ignore[union-attr]
    assert r.output_text.strip() == "Blue."
    body = {"model": AGENT, "input": "Pick a colour.", "max_output_tokens": 40, "temperature": 0,
            "grammar": THINK, "stream": True}
    events = [json.loads(d) for _n, d in parse_frames(httpx.post(f"{served.url}/v1/responses", json=body,
                                                                  timeout=60).text)]
    kinds = [e["type"] for e in events]
    assert "response.reasoning_text.delta" in kinds and "response.reasoning_text.done" in kinds
    assert kinds.index("response.reasoning_text.done") < kinds.index("response.output_text.delta")


def test_responses_are_kept_beside_the_disk_tier(tmp_path):
    from kvllama.backend.stub import StubBackend, StubConfig
    from kvllama.kvcache import CacheConfig

    engine = kvllama.Engine(cache=CacheConfig(ram_bytes=0, shm_dir=None, disk_dir=tmp_path),
                            backend_factory=lambda _path, _opts: StubBackend(StubConfig()))
    try:
        store = create_app(engine, ServerConfig()).state.kvllama.responses
        assert store.persistent and (tmp_path / "responses" / "responses.sqlite3").exists()
        store.close()
        memory = kvllama.Engine(cache=None, backend_factory=lambda _path, _opts: StubBackend(StubConfig()))
        assert not create_app(memory, ServerConfig()).state.kvllama.responses.persistent
        memory.close()
    finally:
        engine.close()
