"""Hostile request bodies (issue #9, items 1-4) are JSON 400s in both API families, never 500s.

Each case here once crashed, aborted or exhausted a real server, or answered
500; over the stub engine we check the answer and that the server keeps
serving. (tests/hostile runs the same cases against a real `kvllama serve`.)
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from kvllama.server.schemas_common import MAX_JSON_DEPTH

HIGH = "\ud800"
LOW = "\udc00"
COMPLETIONS, CHAT, MESSAGES = "/v1/completions", "/v1/chat/completions", "/v1/messages"
COUNT, EMBEDDINGS = "/v1/messages/count_tokens", "/v1/embeddings"


def completion(**extra: Any) -> dict[str, Any]:
    return {"model": "s", "prompt": "hi", "max_tokens": 4, **extra}


def chat(content: Any = "hi", **extra: Any) -> dict[str, Any]:
    return {"model": "s", "messages": [{"role": "user", "content": content}], "max_tokens": 4, **extra}


def message(content: Any = "hi", **extra: Any) -> dict[str, Any]:
    return {"model": "s", "messages": [{"role": "user", "content": content}], "max_tokens": 4, **extra}


def json_schema(schema: Any) -> dict[str, Any]:
    return chat(response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": schema}})


def send(client: Any, path: str, payload: Any = None, raw: bytes | None = None) -> Any:
    # json.dumps escapes lone surrogates as \ud800: valid JSON, not valid Unicode.
    content = raw if raw is not None else json.dumps(payload).encode()
    return client.post(path, content=content, headers={"content-type": "application/json"})


def assert_400(response: Any, path: str, fragment: str = "", param: str | None = None) -> None:
    assert response.status_code == 400, response.text
    data = response.json()
    if path.startswith(MESSAGES):
        assert data["type"] == "error" and data["error"]["type"] == "invalid_request_error"
    else:
        assert data["error"]["type"] == "invalid_request_error"
        if param is not None:
            assert data["error"]["param"] == param
    assert fragment in data["error"]["message"], data["error"]["message"]


def deep_list(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


# --- 1 and 2: grammars that killed the decode loop or aborted the process ---------------------

GRAMMAR_CASES = [
    (f'root ::= "{HIGH}"', "lone surrogate"),
    (f"root ::= [{LOW}-z]", "lone surrogate"),
    ('root ::= "\\uD800"', "lone surrogate"),
    ('root ::= "\\x00"', "NUL"),
    ('root ::= "\x00"', "NUL"),
    ('root ::= "a" "\\x00"', "NUL"),
    ("root ::= [^\\x00-\\U0010FFFF]", "matches no character"),
    # 3: repetitions that made llama.cpp allocate until memory ran out
    ('root ::= "a"{2,1}', "minimum above its maximum"),
    ("root ::= [a-z]{5,2}", "minimum above its maximum"),
    ('root ::= "a"{0,100000000}', "over the limit"),
    ('root ::= "a"{100000000}', "over the limit"),
    ('root ::= "x"{1000}{1000}', "multiply"),
    ("root ::= " + "(" * 30_000 + '"a"' + ")" * 30_000, "nested more than"),
    ("root ::= " + " | ".join(['"a"'] * 20_000), "bytes of UTF-8"),
    ('root ::= e root "x" | "z"\ne ::= f\nf ::= "" | "y"', "memory runs out"),
    ("root ::= ((((", "expecting ')'"),
    ('a ::= "x"', "no 'root' rule"),
]


@pytest.mark.parametrize(("grammar", "fragment"), GRAMMAR_CASES)
@pytest.mark.parametrize("path", [COMPLETIONS, CHAT, MESSAGES])
def test_bad_grammars_are_400s_on_every_route(client, path, grammar, fragment):
    payload = completion(grammar=grammar) if path == COMPLETIONS else chat(grammar=grammar)
    r = send(client, path, payload)
    assert_400(r, path, "" if HIGH in grammar or LOW in grammar else fragment)
    if HIGH not in grammar and LOW not in grammar and not path.startswith(MESSAGES):
        assert r.json()["error"]["code"] == "invalid_grammar"
    assert send(client, path, completion() if path == COMPLETIONS else chat()).status_code == 200


def test_bad_grammars_are_400s_when_streaming_too(client):
    for path, payload in ((COMPLETIONS, completion(grammar='root ::= "\\x00"', stream=True)),
                          (MESSAGES, message(grammar='root ::= "a"{2,1}', stream=True))):
        assert_400(send(client, path, payload), path)


# --- 3 and 4: JSON schema bounds -------------------------------------------------------------

SCHEMA_CASES = [
    ({"type": "array", "items": {"type": "integer"}, "minItems": 3, "maxItems": 1},
     "schema: minItems (3) is greater than maxItems (1)"),
    ({"type": "string", "minLength": 5, "maxLength": 2}, "minLength (5) is greater than maxLength (2)"),
    ({"type": "array", "items": {"type": "integer"}, "maxItems": 10**9}, "schema.maxItems is 1000000000"),
    ({"type": "string", "minLength": 0, "maxLength": 2**62}, "schema.maxLength is"),
    ({"type": "string", "minLength": "abc"}, "schema.minLength must be a non-negative integer, got 'abc'"),
    ({"type": "string", "minLength": -1}, "non-negative integer, got -1"),
    ({"type": "string", "minLength": True}, "got True"),
    ({"type": "string", "maxLength": 2.5}, "got 2.5"),
    ({"type": "array", "minItems": None}, "got None"),
    ({"type": "object", "properties": {"a": {"type": "string", "maxLength": -3}}},
     "schema.properties.a.maxLength"),
    ({"type": "object", "required": "a", "properties": {"a": {}}}, "schema.required must be a list"),
    ({"enum": 5}, "schema.enum must be a list"),
    ({"anyOf": {"type": "string"}}, "schema.anyOf must be a list"),
    ({"type": {"a": 1}}, "schema.type must be a type name"),
    ({"type": ["string", ["x"]]}, "non-empty type names"),
    ({"type": []}, "non-empty type names"),
    ({"$ref": "#/$defs/a", "$defs": {"a": {"$ref": "#/$defs/b"}, "b": {"$ref": "#/$defs/a"}}},
     "left-recursive"),
    ({"type": "object", "properties": {f"p{i}": {"type": "integer"} for i in range(5000)}},
     "schema.properties has 5000 properties; at most 2000"),
    ({"type": "object", "properties": {f"p{i}": {"type": "integer"} for i in range(1900)}},
     "the grammar this JSON schema needs is refused: grammar is"),
    ({"enum": [f"value number {i}" for i in range(5000)]}, "refused"),
]


@pytest.mark.parametrize(("schema", "fragment"), SCHEMA_CASES)
def test_bad_json_schemas_are_400s_naming_the_schema_path(client, schema, fragment):
    assert_400(send(client, CHAT, json_schema(schema)), CHAT, fragment)


def test_the_number_of_subschemas_is_bounded(client):
    schema = {"anyOf": [{"type": "null"}] * 25_000}
    assert_400(send(client, CHAT, json_schema(schema)), CHAT, "schema.anyOf[19999]: the schema is too large")


def test_schema_nesting_is_bounded(client):
    schema: dict[str, Any] = {}
    for _ in range(100):
        schema = {"type": "array", "items": schema}
    assert_400(send(client, CHAT, json_schema(schema)), CHAT, "nests more than 64 levels")


def test_schema_bounds_within_the_limits_are_served(client):
    schema = {"type": "object", "properties": {
        "s": {"type": "string", "minLength": 1.0, "maxLength": 2000},
        "a": {"type": "array", "items": {"type": "integer"}, "minItems": 0, "maxItems": 2000}}}
    assert send(client, CHAT, json_schema(schema)).status_code == 200


# --- 4: lone surrogates anywhere in a body ---------------------------------------------------

SURROGATE_CASES = [
    (COMPLETIONS, completion(prompt=f"hi {HIGH}"), "prompt"),
    (COMPLETIONS, completion(prompt=[f"hi {HIGH}"]), "prompt.0"),
    (COMPLETIONS, completion(stop=HIGH), "stop"),
    (COMPLETIONS, completion(model=HIGH), "model"),
    (COMPLETIONS, completion(session_id=HIGH), "session_id"),
    (CHAT, chat(f"hi {LOW}"), "messages.0.content"),
    (CHAT, chat([{"type": "text", "text": HIGH}]), "messages.0.content.0.text"),
    (CHAT, chat(stop=["a", f"b{HIGH}"]), "stop.1"),
    (CHAT, chat(tools=[{"type": "function", "function": {"name": "f", "description": HIGH,
                                                         "parameters": {"type": "object"}}}]),
     "tools.0.function.description"),
    (CHAT, json_schema({"const": HIGH}), "response_format.json_schema.schema.const"),
    (CHAT, json_schema({"type": "object", "properties": {HIGH: {"type": "string"}}}),
     "response_format.json_schema.schema.properties"),
    (MESSAGES, message(HIGH), "messages.0.content"),
    (MESSAGES, message([{"type": "text", "text": HIGH}]), "messages.0.content.0.text"),
    (MESSAGES, message(system=HIGH), "system"),
    (MESSAGES, message(stop_sequences=[HIGH]), "stop_sequences.0"),
    (MESSAGES, message(tools=[{"name": "f", "input_schema": {"type": "object", "description": LOW}}]),
     "tools.0.input_schema.description"),
    (COUNT, {"messages": [{"role": "user", "content": HIGH}]}, "messages.0.content"),
    (EMBEDDINGS, {"input": HIGH}, "input"),
    (EMBEDDINGS, {"input": ["ok", LOW + HIGH]}, "input.1"),  # reversed pair: two lone halves
]


@pytest.mark.parametrize(("path", "payload", "where"), SURROGATE_CASES)
def test_lone_surrogates_anywhere_are_400s_naming_the_field(client, path, payload, where):
    r = send(client, path, payload)
    openai = not path.startswith(MESSAGES)
    assert_400(r, path, "lone surrogate", param=where if openai else None)
    assert r.json()["error"]["message"].startswith(where)


@pytest.mark.parametrize("raw", [
    b'{"model": "s", "prompt": "hi", "grammar": "root ::= \\"\xed\xa0\x80\\""}',  # UTF-8-encoded U+D800
    b'{"model": "s", "prompt": "\xed\xbf\xbf"}',
    '{"model": "s", "prompt": "hi"}'.encode("utf-16"),  # RFC 8259: bodies are UTF-8
    b'{"model": "s", "prompt": "\xff"}',
])
def test_bodies_that_are_not_utf8_are_400s(client, raw):
    assert_400(send(client, COMPLETIONS, raw=raw), COMPLETIONS, "not UTF-8 text")


def test_a_utf8_byte_order_mark_is_tolerated(client):
    raw = b"\xef\xbb\xbf" + json.dumps(completion()).encode()
    assert send(client, COMPLETIONS, raw=raw).status_code == 200


def test_escaped_surrogate_pairs_are_ordinary_text(client):
    r = send(client, COMPLETIONS, completion(prompt="smile 😀", stop=["😀"]))  # sent as \ud83d\ude00
    assert r.status_code == 200
    assert send(client, MESSAGES, message("smile 😀")).status_code == 200


# --- 4: nesting ------------------------------------------------------------------------------

NESTED = [
    (COMPLETIONS, deep_list(200_000)),
    (COMPLETIONS, b'{"prompt": ' + deep_list(200_000) + b"}"),
    (MESSAGES, b'{"max_tokens": 4, "messages": ' + deep_list(200_000) + b"}"),
    (CHAT, b'{"a":' * 200_000 + b"1" + b"}" * 200_000),
    (CHAT, b'{"model": "s", "messages": ' + deep_list(MAX_JSON_DEPTH + 5) + b"}"),
    (MESSAGES, b'{"metadata": ' + b'{"a": ' * MAX_JSON_DEPTH + b"1" + b"}" * MAX_JSON_DEPTH + b"}"),
]


@pytest.mark.parametrize(("path", "raw"), NESTED, ids=[f"n{i}" for i in range(len(NESTED))])
def test_deeply_nested_bodies_are_400s(client, path, raw):
    assert_400(send(client, path, raw=raw), path, "nested too deeply")
    assert send(client, path, chat() if path != COMPLETIONS else completion()).status_code == 200


def test_nesting_at_the_limit_is_fine(client):
    metadata = b'{"a": ' * (MAX_JSON_DEPTH - 2) + b"1" + b"}" * (MAX_JSON_DEPTH - 2)
    raw = b'{"model": "s", "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}], "metadata": '
    assert send(client, MESSAGES, raw=raw + metadata + b"}").status_code == 200


def test_the_deep_nesting_error_names_where(client):
    raw = b'{"model": "s", "messages": [{"role": "user", "content": ' + deep_list(300) + b"}]}"
    r = send(client, CHAT, raw=raw)
    assert_400(r, CHAT, "messages.0.content.0.0", param="messages")


@pytest.mark.parametrize("raw", [b'{"prompt": "a", "temperature": NaN}', b'{"prompt": Infinity}',
                                 b'{"prompt": -Infinity}', b'{"max_tokens": ' + b"9" * 5000 + b"}"])
def test_non_json_numbers_are_400s(client, raw):
    assert_400(send(client, COMPLETIONS, raw=raw), COMPLETIONS, "the request body")
