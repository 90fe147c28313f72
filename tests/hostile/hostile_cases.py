"""The hostile requests of issue #9 and more, as data: one :class:`Case` per request.

Each case is a request whose answer must be a JSON 2xx or 4xx within the
time limit, after which the server must be alive and unchanged (see
conftest.py). Cases 1-6 of the issue come first, then our own.
"""

# ruff: noqa: E501 (tables of request bodies read better one per line)

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from hostile_support import MAX_MEDIA_BYTES, N_CTX

from kvllama.bench.media_samples import b64, data_url, pixel_bomb_png, png, wav

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
EMBEDDINGS = "/v1/embeddings"
MESSAGES = "/v1/messages"
COUNT = "/v1/messages/count_tokens"


@dataclass(frozen=True)
class Case:
    id: str
    path: str
    body: Any = None
    # Sent as they are instead of json.dumps(body) (invalid UTF-8, truncated JSON...).
    raw: bytes | None = None
    headers: dict[str, str | bytes] = field(default_factory=dict)
    # Allowed statuses; empty: any 2xx or 4xx.
    expect: tuple[int, ...] = ()
    timeout: float = 30.0
    method: str = "POST"

    def content(self) -> bytes:
        return self.raw if self.raw is not None else json.dumps(self.body).encode()


def completion(**fields: Any) -> dict[str, Any]:
    return {"prompt": "Hello", "max_tokens": 4, **fields}


def chat(content: Any = "Hello", **fields: Any) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": content}], "max_tokens": 4, **fields}


def message(content: Any = "Hello", **fields: Any) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": content}], "max_tokens": 4, **fields}


def json_schema(schema: Any) -> dict[str, Any]:
    return chat(response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": schema}})


def deep_list(depth: int) -> str:
    return "[" * depth + "]" * depth


SURROGATE = "\ud800"
LOW_SURROGATE = "\udc00"
MIB = 1 << 20

# --- issue #9, cases 1, 2, 4 and 6 (3, 5 and 7 have tests of their own) -------------------

ISSUE_CASES = [
    # 1. A lone surrogate in a grammar (valid JSON: "\ud800") killed the decode loop.
    Case("1-grammar-lone-surrogate-completions", COMPLETIONS, completion(grammar=f'root ::= "{SURROGATE}"')),
    Case("1-grammar-lone-surrogate-completions-stream", COMPLETIONS,
         completion(grammar=f'root ::= "{SURROGATE}"', stream=True)),
    Case("1-grammar-lone-surrogate-chat", CHAT, chat(grammar=f'root ::= "{SURROGATE}"')),
    Case("1-grammar-lone-surrogate-messages", MESSAGES, message(grammar=f'root ::= "{SURROGATE}"')),
    Case("1-grammar-low-surrogate-in-class", COMPLETIONS, completion(grammar=f"root ::= [{LOW_SURROGATE}-z]")),
    # 2. A grammar that allows no token aborted the process.
    Case("2-grammar-no-token-escaped-nul", COMPLETIONS, completion(grammar='root ::= "\\x00"')),
    Case("2-grammar-no-token-literal-nul", COMPLETIONS, completion(grammar='root ::= "\x00"')),
    Case("2-grammar-no-token-stream", COMPLETIONS, completion(grammar='root ::= "\\x00"', stream=True)),
    Case("2-grammar-no-token-chat", CHAT, chat(grammar='root ::= "\\x00"')),
    Case("2-grammar-no-token-messages", MESSAGES, message(grammar='root ::= "\\x00"')),
    Case("2-grammar-no-token-after-one", COMPLETIONS, completion(grammar='root ::= "a" "\\x00"')),
    Case("2-grammar-empty-class", COMPLETIONS, completion(grammar="root ::= [^\\x00-\\U0010FFFF]")),
    # 4. These were 500s.
    Case("4-schema-minLength-string", CHAT, json_schema({"type": "string", "minLength": "abc"})),
    Case("4-schema-maxLength-float", CHAT, json_schema({"type": "string", "maxLength": 2.5})),
    Case("4-schema-minLength-negative", CHAT, json_schema({"type": "string", "minLength": -1})),
    Case("4-schema-minItems-null", CHAT, json_schema({"type": "array", "minItems": None})),
    Case("4-schema-minLength-bool", CHAT, json_schema({"type": "string", "minLength": True})),
    Case("4-surrogate-prompt", COMPLETIONS, completion(prompt=f"hi {SURROGATE}")),
    Case("4-surrogate-prompt-list", COMPLETIONS, completion(prompt=[f"hi {SURROGATE}"])),
    Case("4-surrogate-chat-content", CHAT, chat(f"hi {LOW_SURROGATE}")),
    Case("4-surrogate-chat-part", CHAT, chat([{"type": "text", "text": SURROGATE}])),
    Case("4-surrogate-chat-system", CHAT,
         {"messages": [{"role": "system", "content": SURROGATE}, {"role": "user", "content": "hi"}],
          "max_tokens": 4}),
    Case("4-surrogate-stop", COMPLETIONS, completion(stop=SURROGATE)),
    Case("4-surrogate-stop-list-chat", CHAT, chat(stop=["a", f"b{SURROGATE}"])),
    Case("4-surrogate-messages-content", MESSAGES, message(SURROGATE)),
    Case("4-surrogate-messages-block", MESSAGES, message([{"type": "text", "text": SURROGATE}])),
    Case("4-surrogate-messages-system", MESSAGES, message(system=SURROGATE)),
    Case("4-surrogate-messages-stop", MESSAGES, message(stop_sequences=[SURROGATE])),
    Case("4-surrogate-embeddings", EMBEDDINGS, {"input": SURROGATE}),
    Case("4-surrogate-count-tokens", COUNT, {"messages": [{"role": "user", "content": SURROGATE}]}),
    Case("4-surrogate-model-name", COMPLETIONS, completion(model=SURROGATE)),
    Case("4-surrogate-session-id", COMPLETIONS, completion(session_id=SURROGATE)),
    Case("4-surrogate-json-schema-const", CHAT, json_schema({"const": SURROGATE})),
    Case("4-surrogate-json-schema-key", CHAT,
         json_schema({"type": "object", "properties": {SURROGATE: {"type": "string"}}})),
    Case("4-nested-200000-top", COMPLETIONS, raw=deep_list(200_000).encode()),
    Case("4-nested-200000-prompt", COMPLETIONS, raw=b'{"prompt": ' + deep_list(200_000).encode() + b"}"),
    Case("4-nested-200000-messages", MESSAGES,
         raw=b'{"max_tokens": 4, "messages": ' + deep_list(200_000).encode() + b"}"),
    Case("4-nested-200000-objects", CHAT, raw=b'{"a":' * 200_000 + b"1" + b"}" * 200_000),
    Case("4-nested-schema-3000", CHAT,
         raw=(b'{"max_tokens":4,"messages":[{"role":"user","content":"x"}],"response_format":'
              b'{"type":"json_schema","json_schema":{"name":"x","schema":'
              + b'{"type":"array","items":' * 3000 + b"{}" + b"}" * 3000 + b"}}}")),
    # 6. Out-of-range numbers.
    Case("6-top_k-2**32+5", COMPLETIONS, completion(top_k=2**32 + 5)),
    Case("6-top_k-2**31", COMPLETIONS, completion(top_k=2**31)),
    Case("6-top_k-2**64", COMPLETIONS, completion(top_k=2**64)),
    Case("6-top_k-messages-2**31", MESSAGES, message(top_k=2**31)),
    Case("6-penalty_last_n-huge", COMPLETIONS, completion(penalty_last_n=2**62)),
    Case("6-repetition_penalty-1e999", COMPLETIONS, raw=b'{"prompt":"hi","max_tokens":4,"repetition_penalty":1e999}'),
    Case("6-repetition_penalty-negative", COMPLETIONS, completion(repetition_penalty=-5.0)),
    Case("6-max_tokens-negative", COMPLETIONS, completion(max_tokens=-1)),
    Case("6-max_tokens-zero", COMPLETIONS, completion(max_tokens=0)),
    Case("6-max_tokens-2**63", COMPLETIONS, completion(max_tokens=2**63)),
    Case("6-max_tokens-negative-chat", CHAT, chat(max_tokens=-(2**63))),
    Case("6-max_completion_tokens-negative", CHAT, chat(max_completion_tokens=-7)),
    Case("6-max_tokens-negative-messages", MESSAGES, message(max_tokens=-1)),
    Case("6-seed-negative", COMPLETIONS, completion(seed=-1)),
    Case("6-seed-2**64", COMPLETIONS, completion(seed=2**64)),
    Case("6-seed-2**32-1", COMPLETIONS, completion(seed=2**32 - 1)),
    Case("6-seed-messages-2**70", MESSAGES, message(seed=2**70)),
    Case("6-temperature-1e999", COMPLETIONS, raw=b'{"prompt":"hi","max_tokens":4,"temperature":1e999}'),
    Case("6-temperature--1e999", COMPLETIONS, raw=b'{"prompt":"hi","max_tokens":4,"temperature":-1e999}'),
    Case("6-temperature-NaN", COMPLETIONS, raw=b'{"prompt":"hi","max_tokens":4,"temperature":NaN}'),
    Case("6-top_p-NaN", COMPLETIONS, raw=b'{"prompt":"hi","max_tokens":4,"top_p":NaN}'),
    Case("6-min_p-Infinity", COMPLETIONS, raw=b'{"prompt":"hi","max_tokens":4,"min_p":Infinity}'),
    Case("6-frequency_penalty-NaN", CHAT,
         raw=b'{"messages":[{"role":"user","content":"hi"}],"max_tokens":4,"frequency_penalty":NaN}'),
    Case("6-messages-temperature-NaN", MESSAGES,
         raw=b'{"messages":[{"role":"user","content":"hi"}],"max_tokens":4,"temperature":NaN}'),
    Case("6-messages-top_p-1e999", MESSAGES,
         raw=b'{"messages":[{"role":"user","content":"hi"}],"max_tokens":4,"top_p":1e999}'),
    Case("6-thinking-budget-2**63", CHAT, chat(thinking=True, thinking_budget_tokens=2**63)),
    Case("6-messages-thinking-budget-2**63", MESSAGES,
         message(thinking={"type": "enabled", "budget_tokens": 2**63})),
    Case("6-n_ctx-overflow-text", COMPLETIONS, completion(prompt="hello " * (N_CTX * 2))),
    Case("6-n_ctx-overflow-tokens", COMPLETIONS, completion(prompt=[100] * (N_CTX * 2))),
    Case("6-n_ctx-overflow-chat", CHAT, chat("hello " * (N_CTX * 2))),
    Case("6-n_ctx-overflow-messages", MESSAGES, message("hello " * (N_CTX * 2))),
    Case("6-n_ctx-edge-prompt-plus-max_tokens", COMPLETIONS,
         completion(prompt=[100] * (N_CTX // 2 - 2), max_tokens=64)),
    Case("6-token-id-vocab", COMPLETIONS, completion(prompt=[2, 262144])),
    Case("6-token-id-huge", COMPLETIONS, completion(prompt=[2, 2**40])),
    Case("6-token-id-negative", COMPLETIONS, completion(prompt=[-1])),
    Case("6-token-id-int-min", COMPLETIONS, completion(prompt=[-(2**31)])),
    Case("6-token-id-nested", COMPLETIONS, completion(prompt=[[2, 262144]])),
    Case("6-token-id-empty", COMPLETIONS, completion(prompt=[])),
    Case("6-token-id-empty-nested", COMPLETIONS, completion(prompt=[[]])),
    Case("6-embeddings-token-id-huge", EMBEDDINGS, {"input": [2, 2**40]}),
    Case("6-embeddings-token-id-negative", EMBEDDINGS, {"input": [[-5]]}),
]

# --- our own ---------------------------------------------------------------------------------

_WRONG_TYPES = [
    Case("type-prompt-int", COMPLETIONS, {"prompt": 5, "max_tokens": 4}),
    Case("type-prompt-object", COMPLETIONS, {"prompt": {"a": 1}, "max_tokens": 4}),
    Case("type-prompt-null", COMPLETIONS, {"prompt": None, "max_tokens": 4}),
    Case("type-prompt-mixed-list", COMPLETIONS, {"prompt": ["a", 1], "max_tokens": 4}),
    Case("type-prompt-floats", COMPLETIONS, {"prompt": [1.5, 2.5], "max_tokens": 4}),
    Case("type-prompt-bools", COMPLETIONS, {"prompt": [True, False], "max_tokens": 4}),
    Case("type-prompt-missing", COMPLETIONS, {"max_tokens": 4}),
    Case("type-max_tokens-string", COMPLETIONS, completion(max_tokens="8")),
    Case("type-max_tokens-bool", COMPLETIONS, completion(max_tokens=True)),
    Case("type-max_tokens-float", COMPLETIONS, completion(max_tokens=2.5)),
    Case("type-stream-string", COMPLETIONS, completion(stream="yes")),
    Case("type-stop-ints", COMPLETIONS, completion(stop=[1, 2])),
    Case("type-stop-empty-string", COMPLETIONS, completion(stop="")),
    Case("type-stop-empty-list-item", CHAT, chat(stop=["", "x"])),
    Case("type-temperature-string", COMPLETIONS, completion(temperature="hot")),
    Case("type-model-int", COMPLETIONS, completion(model=5)),
    Case("type-model-unknown", COMPLETIONS, completion(model="no-such-model")),
    Case("type-model-empty", COMPLETIONS, completion(model="")),
    Case("type-n-2", COMPLETIONS, completion(n=2)),
    Case("type-logit_bias-inf", COMPLETIONS, raw=b'{"prompt":"hi","max_tokens":4,"logit_bias":{"1":1e999}}'),
    Case("type-logprobs-5", COMPLETIONS, completion(logprobs=5)),
    Case("type-stream_options-string", COMPLETIONS, completion(stream=True, stream_options="x")),
    Case("type-grammar-int", COMPLETIONS, completion(grammar=5)),
    Case("type-grammar-empty", COMPLETIONS, completion(grammar="")),
    Case("type-grammar-garbage", COMPLETIONS, completion(grammar="root ::= ((((")),
    Case("type-grammar-no-root", COMPLETIONS, completion(grammar='a ::= "x"')),
    Case("type-grammar-undefined-rule", COMPLETIONS, completion(grammar="root ::= missing")),
    Case("type-grammar-left-recursion", COMPLETIONS, completion(grammar='root ::= root "a" | "b"')),
    Case("type-grammar-invalid-stream", COMPLETIONS, completion(grammar="root ::= ((((", stream=True)),
    Case("type-messages-string", CHAT, {"messages": "hi", "max_tokens": 4}),
    Case("type-messages-empty", CHAT, {"messages": [], "max_tokens": 4}),
    Case("type-messages-ints", CHAT, {"messages": [5], "max_tokens": 4}),
    Case("type-message-role-int", CHAT, {"messages": [{"role": 5, "content": "x"}], "max_tokens": 4}),
    Case("type-message-role-unknown", CHAT, {"messages": [{"role": "wizard", "content": "x"}], "max_tokens": 4}),
    Case("type-message-content-int", CHAT, chat(5)),
    Case("type-message-content-parts-garbage", CHAT, chat([5, None, {"type": "nope"}])),
    Case("type-message-content-image", CHAT,
         chat([{"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}])),
    Case("type-message-content-part-no-text", CHAT, chat([{"type": "text"}])),
    Case("type-message-content-null", CHAT, chat(None)),
    Case("type-message-tool_calls-garbage", CHAT,
         {"messages": [{"role": "user", "content": "x"},
                       {"role": "assistant", "content": None, "tool_calls": [{"function": 5}]},
                       {"role": "tool", "content": "r", "tool_call_id": 7}], "max_tokens": 4}),
    Case("type-message-tool_calls-bad-arguments", CHAT,
         {"messages": [{"role": "user", "content": "x"},
                       {"role": "assistant", "tool_calls": [
                           {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{not json"}}]}],
          "max_tokens": 4}),
    Case("type-tools-garbage", CHAT, chat(tools=[5, "x", {"type": "function"}])),
    Case("type-tools-not-list", CHAT, chat(tools={"a": 1})),
    Case("type-tool_choice-garbage", CHAT, chat(tool_choice={"type": 5})),
    Case("type-response_format-unknown", CHAT, chat(response_format={"type": "yaml"})),
    Case("type-response_format-no-schema", CHAT, chat(response_format={"type": "json_schema"})),
    Case("type-response_format-schema-list", CHAT,
         chat(response_format={"type": "json_schema", "json_schema": {"schema": []}})),
    Case("type-response_format-and-grammar", CHAT,
         chat(response_format={"type": "json_object"}, grammar='root ::= "a"')),
    Case("type-json_schema-unknown-type", CHAT, json_schema({"type": "tensor"})),
    Case("type-json_schema-ref-missing", CHAT, json_schema({"$ref": "#/$defs/nope"})),
    Case("type-json_schema-ref-loop", CHAT,
         json_schema({"$ref": "#/$defs/a", "$defs": {"a": {"$ref": "#/$defs/b"}, "b": {"$ref": "#/$defs/a"}}})),
    Case("type-json_schema-ref-self", CHAT, json_schema({"$ref": "#"})),
    Case("type-json_schema-ref-remote", CHAT, json_schema({"$ref": "http://127.0.0.1:1/schema.json"})),
    Case("type-json_schema-enum-empty", CHAT, json_schema({"enum": []})),
    Case("type-json_schema-anyOf-empty", CHAT, json_schema({"anyOf": []})),
    Case("type-json_schema-type-list-empty", CHAT, json_schema({"type": []})),
    Case("type-json_schema-10000-properties", CHAT,
         json_schema({"type": "object", "properties": {f"p{i}": {"type": "integer"} for i in range(10_000)}})),
    Case("type-json_schema-enum-10000", CHAT, json_schema({"enum": list(range(10_000))})),
    Case("type-json_schema-huge-maxLength", CHAT,
         json_schema({"type": "string", "minLength": 0, "maxLength": 2**62})),
    Case("type-embeddings-empty-list", EMBEDDINGS, {"input": []}),
    Case("type-embeddings-empty-string", EMBEDDINGS, {"input": ""}),
    Case("type-embeddings-dict", EMBEDDINGS, {"input": {"a": 1}}),
    Case("type-embeddings-format", EMBEDDINGS, {"input": "x", "encoding_format": "bf16"}),
    Case("type-embeddings-dimensions", EMBEDDINGS, {"input": "x", "dimensions": -1}),
    Case("type-embeddings-long-text", EMBEDDINGS, {"input": "hello " * 5000}),
]

_ANTHROPIC = [
    Case("msg-max_tokens-missing", MESSAGES, {"messages": [{"role": "user", "content": "hi"}]}),
    Case("msg-role-system", MESSAGES, {"messages": [{"role": "system", "content": "hi"}], "max_tokens": 4}),
    Case("msg-content-int", MESSAGES, message(5)),
    Case("msg-blocks-ints", MESSAGES, message([5])),
    Case("msg-block-empty", MESSAGES, message([{}])),
    Case("msg-block-unknown-type", MESSAGES, message([{"type": "hologram"}])),
    Case("msg-block-text-missing", MESSAGES, message([{"type": "text"}])),
    Case("msg-block-text-int", MESSAGES, message([{"type": "text", "text": 5}])),
    Case("msg-block-text-nested", MESSAGES, message([{"type": "text", "text": {"type": "text", "text": "x"}}])),
    Case("msg-block-image", MESSAGES,
         message([{"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAAA"}}])),
    Case("msg-block-document", MESSAGES, message([{"type": "document", "source": {"type": "text", "data": "x"}}])),
    Case("msg-block-tool_use-empty", MESSAGES,
         {"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": [{"type": "tool_use"}]}],
          "max_tokens": 4}),
    Case("msg-block-tool_use-input-string", MESSAGES,
         {"messages": [{"role": "user", "content": "x"},
                       {"role": "assistant", "content": [{"type": "tool_use", "id": 1, "name": None, "input": "x"}]}],
          "max_tokens": 4}),
    Case("msg-block-tool_result-nested", MESSAGES,
         message([{"type": "tool_result", "tool_use_id": "t",
                   "content": [{"type": "tool_result", "content": [{"type": "image"}]}]}])),
    Case("msg-block-tool_result-content-int", MESSAGES,
         message([{"type": "tool_result", "tool_use_id": "t", "content": 5}])),
    Case("msg-block-thinking-unsigned", MESSAGES,
         {"messages": [{"role": "user", "content": "x"},
                       {"role": "assistant", "content": [{"type": "thinking", "thinking": "hmm"}]},
                       {"role": "user", "content": "y"}], "max_tokens": 4}),
    Case("msg-block-thinking-bad-signature", MESSAGES,
         {"messages": [{"role": "user", "content": "x"},
                       {"role": "assistant", "content": [
                           {"type": "thinking", "thinking": "hmm", "signature": "AAAA" * 100}]},
                       {"role": "user", "content": "y"}], "max_tokens": 4}),
    Case("msg-block-redacted-thinking", MESSAGES,
         {"messages": [{"role": "user", "content": "x"},
                       {"role": "assistant", "content": [{"type": "redacted_thinking", "data": 5}]}],
          "max_tokens": 4}),
    Case("msg-system-bad-blocks", MESSAGES, message(system=[{"type": "image"}, 5])),
    Case("msg-system-int", MESSAGES, message(system=5)),
    Case("msg-thinking-budget-zero", MESSAGES, message(thinking={"type": "enabled", "budget_tokens": 0})),
    Case("msg-thinking-type-unknown", MESSAGES, message(thinking={"type": "maybe"})),
    Case("msg-tools-garbage", MESSAGES, message(tools=[{"name": 5, "input_schema": "x"}, 7])),
    Case("msg-tool_choice-string", MESSAGES, message(tool_choice="auto")),
    Case("msg-tool_choice-unknown-tool", MESSAGES,
         message(tools=[{"name": "f", "input_schema": {"type": "object"}}],
                 tool_choice={"type": "tool", "name": "nope"})),
    Case("msg-stop_sequences-empty", MESSAGES, message(stop_sequences=[""])),
    Case("msg-stop_sequences-ints", MESSAGES, message(stop_sequences=[1])),
    Case("msg-metadata-garbage", MESSAGES, message(metadata=[1, 2])),
    Case("msg-assistant-first-and-last", MESSAGES,
         {"messages": [{"role": "assistant", "content": "a"}, {"role": "assistant", "content": "b"}],
          "max_tokens": 4}),
    Case("msg-stream-bad-grammar", MESSAGES, message(stream=True, grammar="root ::= ((((")),
    Case("count-no-messages", COUNT, {"messages": []}),
    Case("count-garbage-blocks", COUNT, {"messages": [{"role": "user", "content": [{"type": 5}]}]}),
]

_HUGE = [
    Case("huge-stop-1MB", COMPLETIONS, completion(stop="a" * MIB)),
    Case("huge-stop-1MB-stream", COMPLETIONS, completion(stop="a" * MIB, stream=True)),
    Case("huge-stop-10000-items", COMPLETIONS, completion(stop=[f"s{i}" for i in range(10_000)])),
    Case("huge-stop-sequences-1MB", MESSAGES, message(stop_sequences=["b" * MIB])),
    Case("huge-prompt-3MB", COMPLETIONS, completion(prompt="z" * (3 * MIB))),
    Case("huge-body-over-limit", COMPLETIONS, completion(prompt="z" * (5 * MIB)), expect=(413,)),
    Case("huge-grammar-1MB", COMPLETIONS, completion(grammar="root ::= " + " | ".join(['"a"'] * (MIB // 6)))),
    Case("huge-grammar-deep-parens", COMPLETIONS, completion(grammar="root ::= " + "(" * 50_000 + '"a"' + ")" * 50_000)),
    Case("huge-grammar-deep-parens-under-size-cap", COMPLETIONS, completion(grammar="root ::= " + "(" * 30_000 + '"a"' + ")" * 30_000)),
    Case("huge-grammar-rule-chain-3000", COMPLETIONS, completion(grammar="root ::= r0\n" + "".join(f"r{i} ::= r{i + 1}\n" for i in range(3000)) + 'r3000 ::= "a"\n')),
    Case("huge-session-id", COMPLETIONS, completion(session_id="s" * 100_000)),
    Case("huge-cache-salt", COMPLETIONS, completion(cache_salt="s" * 100_000)),
    Case("huge-model-name", COMPLETIONS, completion(model="m" * MIB)),
    Case("huge-messages-10000", CHAT, {"messages": [{"role": "user", "content": "x"}] * 10_000, "max_tokens": 4}),
    Case("huge-tools-schema-deep", CHAT,
         chat(tools=[{"type": "function", "function": {"name": "f", "parameters": json.loads(
             '{"type":"object","properties":{"a":' * 300 + "{}" + "}}" * 300)}}])),
    Case("huge-tools-1000", CHAT,
         chat(tools=[{"type": "function", "function": {"name": f"f{i}", "description": "d" * 100,
                                                       "parameters": {"type": "object"}}} for i in range(1000)])),
    Case("huge-tools-messages-1000", MESSAGES,
         message(tools=[{"name": f"f{i}", "description": "d" * 100, "input_schema": {"type": "object"}}
                        for i in range(1000)])),
    Case("huge-embeddings-1MB", EMBEDDINGS, {"input": ["hello " * 100_000]}),
    Case("huge-unknown-fields", COMPLETIONS, completion(**{f"x{i}": {"y": [i, None, "z"]} for i in range(10_000)})),
]

_BODIES = [
    Case("body-empty", COMPLETIONS, raw=b""),
    Case("body-whitespace", COMPLETIONS, raw=b"   \n\t "),
    Case("body-null", COMPLETIONS, raw=b"null"),
    Case("body-list", COMPLETIONS, raw=b"[]"),
    Case("body-number-1e999", COMPLETIONS, raw=b"1e999"),
    Case("body-string", COMPLETIONS, raw=b'"prompt"'),
    Case("body-truncated", COMPLETIONS, raw=b'{"prompt": "hi", "max_tokens": 4'),
    Case("body-trailing-garbage", COMPLETIONS, raw=b'{"prompt": "hi", "max_tokens": 4} xyz'),
    Case("body-duplicate-keys", COMPLETIONS, raw=b'{"prompt": "hi", "max_tokens": 4, "max_tokens": -4}'),
    Case("body-invalid-utf8", COMPLETIONS, raw=b'{"prompt": "\xff\xfe hi", "max_tokens": 4}'),
    Case("body-invalid-utf8-messages", MESSAGES,
         raw=b'{"max_tokens": 4, "messages": [{"role": "user", "content": "\xc3\x28"}]}'),
    Case("body-utf16", COMPLETIONS, raw='{"prompt": "hi", "max_tokens": 4}'.encode("utf-16")),
    Case("body-utf8-bom", COMPLETIONS, raw=b'\xef\xbb\xbf{"prompt": "hi", "max_tokens": 4}'),
    Case("body-nul-bytes", COMPLETIONS, raw=b'{"prompt": "hi\x00", "max_tokens": 4}'),
    Case("body-escaped-nul", COMPLETIONS, raw=b'{"prompt": "hi\\u0000there", "max_tokens": 4}'),
    Case("body-huge-number", COMPLETIONS, raw=b'{"prompt": "hi", "max_tokens": ' + b"9" * 5000 + b"}"),
    Case("body-huge-exponent", COMPLETIONS, raw=b'{"prompt": "hi", "max_tokens": 4, "temperature": 1e-99999}'),
    Case("content-type-text", COMPLETIONS, completion(), headers={"content-type": "text/plain"}),
    Case("content-type-form", COMPLETIONS, raw=b"prompt=hi&max_tokens=4",
         headers={"content-type": "application/x-www-form-urlencoded"}),
    Case("content-type-multipart", COMPLETIONS, raw=b"--b\r\n\r\nx\r\n--b--\r\n",
         headers={"content-type": "multipart/form-data; boundary=b"}),
    Case("content-type-garbage", MESSAGES, message(), headers={"content-type": "\x7f/;;;=="}),
    Case("content-encoding-gzip-lie", COMPLETIONS, completion(), headers={"content-encoding": "gzip"}),
    Case("method-get-on-post", COMPLETIONS, method="GET", expect=(405,)),
    Case("method-delete-messages", MESSAGES, method="DELETE", expect=(405,)),
    Case("route-unknown", "/v1/nope", completion(), expect=(404,)),
    Case("route-models-nul", "/v1/models/%00", method="GET"),
    Case("route-models-surrogate-escape", "/v1/models/%ED%A0%80", method="GET"),
    Case("route-models-traversal", "/v1/models/..%2F..%2Fetc%2Fpasswd", method="GET"),
    Case("route-models-long", "/v1/models/" + "m" * 10_000, method="GET"),
]

_SESSIONS = [
    Case("session-empty", COMPLETIONS, completion(session_id="")),
    Case("session-nul", COMPLETIONS, completion(session_id="a\x00b")),
    Case("session-newline", CHAT, chat(session_id="a\nb")),
    Case("session-int", COMPLETIONS, completion(session_id=5)),
    Case("session-header-long", COMPLETIONS, completion(), headers={"x-session-id": "s" * 10_000}),
    Case("session-header-mismatch", COMPLETIONS, completion(session_id="a"), headers={"x-session-id": "b"}),
    Case("session-header-non-ascii", COMPLETIONS, completion(), headers={"x-session-id": "s\u00e9".encode()}),
    Case("session-messages-garbage", MESSAGES, message(session_id=["x"])),
    Case("session-reuse-other-prompt", COMPLETIONS, completion(session_id="hostile-s1", prompt=[2, 100, 200])),
    Case("cache-salt-traversal", COMPLETIONS, completion(cache_salt="../../../../tmp/x")),
    Case("cache-salt-empty", COMPLETIONS, completion(cache_salt="")),
    Case("cache-salt-messages-slash", MESSAGES, message(cache_salt="a/b")),
]

# --- images and audio (issue 25): each refused with a 400 naming the problem --------------------

_PNG = png(24, 16, 7)
_WAV = wav(0.5, 7)
OLLAMA_CHAT, OLLAMA_GENERATE = "/api/chat", "/api/generate"


def image_part(data: bytes, mime: str = "image/png") -> dict[str, Any]:
    return {"type": "image_url", "image_url": {"url": data_url(data, mime)}}


def anthropic_image(data: str, media_type: str = "image/png") -> dict[str, Any]:
    return {"type": "image", "source": {"type": "base64", "media_type": media_type, "data": data}}


_MEDIA = [
    Case("media-png-truncated", CHAT, chat([image_part(_PNG[: len(_PNG) // 2])]), expect=(400,)),
    Case("media-png-garbage-after-header", CHAT, chat([image_part(_PNG[:33] + b"\xff" * 200)]), expect=(400,)),
    Case("media-png-header-only", CHAT, chat([image_part(_PNG[:24])]), expect=(400,)),
    Case("media-not-an-image", CHAT, chat([image_part(b"just some text, not a picture")]), expect=(400,)),
    Case("media-mislabelled-jpeg", CHAT, chat([image_part(_PNG, "image/jpeg")]), expect=(400,)),
    Case("media-webp", CHAT, chat([image_part(b"RIFF\x00\x00\x00\x00WEBPVP8 " + b"\x00" * 32, "image/webp")]),
         expect=(400,)),
    Case("media-pixel-bomb", CHAT, chat([image_part(pixel_bomb_png())]), expect=(400,), timeout=5),
    Case("media-pixel-bomb-anthropic", MESSAGES, message([anthropic_image(b64(pixel_bomb_png()))]),
         expect=(400,), timeout=5),
    Case("media-zero-size-image", CHAT, chat([image_part(pixel_bomb_png(0, 0))]), expect=(400,)),
    Case("media-too-many", CHAT, chat([image_part(_PNG)] * 9), expect=(400,)),
    Case("media-too-large", CHAT, chat([image_part(_PNG + b"\x00" * MAX_MEDIA_BYTES)]), expect=(400,)),
    Case("media-remote-url", CHAT, chat([{"type": "image_url", "image_url": {"url": "http://169.254.169.254/x.png"}}]),
         expect=(400,)),
    Case("media-file-url", CHAT, chat([{"type": "image_url", "image_url": {"url": "file:///etc/passwd"}}]),
         expect=(400,)),
    Case("media-bad-base64", CHAT, chat([{"type": "image_url", "image_url": {"url": "data:image/png;base64,***"}}]),
         expect=(400,)),
    Case("media-image-url-not-a-string", CHAT, chat([{"type": "image_url", "image_url": {"url": 5}}]),
         expect=(400,)),
    Case("media-audio-garbage", CHAT,
         chat([{"type": "input_audio", "input_audio": {"data": b64(b"RIFF" + b"\x00" * 40), "format": "wav"}}]),
         expect=(400,)),
    Case("media-audio-is-an-image", CHAT,
         chat([{"type": "input_audio", "input_audio": {"data": b64(_PNG), "format": "wav"}}]), expect=(400,)),
    Case("media-audio-format-unknown", CHAT,
         chat([{"type": "input_audio", "input_audio": {"data": b64(_WAV), "format": "ogg"}}]), expect=(400,)),
    Case("media-anthropic-url-source", MESSAGES,
         message([{"type": "image", "source": {"type": "url", "url": "https://example.com/a.png"}}]), expect=(400,)),
    Case("media-anthropic-truncated", MESSAGES, message([anthropic_image(b64(_PNG[:40]))]), expect=(400,)),
    Case("media-ollama-chat-garbage", OLLAMA_CHAT,
         {"model": "default", "stream": False, "messages": [{"role": "user", "content": "x", "images": ["@@@"]}]},
         expect=(400,)),
    Case("media-ollama-generate-truncated", OLLAMA_GENERATE,
         {"model": "default", "stream": False, "prompt": "x", "images": [b64(_PNG[:50])]}, expect=(400,)),
    Case("media-marker-without-media", COMPLETIONS, completion(prompt="<__media__> hello"), expect=(200,)),
    # A good image, for contrast: answered.
    Case("media-good-image", CHAT, chat([image_part(_PNG), {"type": "text", "text": "What is this?"}]),
         expect=(200,)),
]

OWN_CASES = _WRONG_TYPES + _ANTHROPIC + _HUGE + _BODIES + _SESSIONS + _MEDIA

# --- issue #9, case 3: requests that made llama.cpp's grammar parser allocate until OOM ------
# Run by test_allocation.py with a tight time limit and a bound on the server's memory growth.

ALLOCATION_CASES = [
    Case("3-grammar-repetition-2,1", COMPLETIONS, completion(grammar='root ::= "a"{2,1}'), timeout=10),
    Case("3-grammar-repetition-5,2-messages", MESSAGES, message(grammar='root ::= [a-z]{5,2}'), timeout=10),
    Case("3-json_schema-minItems>maxItems", CHAT,
         json_schema({"type": "array", "items": {"type": "integer"}, "minItems": 3, "maxItems": 1}), timeout=10),
    Case("3-json_schema-minLength>maxLength", CHAT,
         json_schema({"type": "string", "minLength": 5, "maxLength": 2}), timeout=10),
    Case("3-grammar-repetition-0,1e8", COMPLETIONS, completion(grammar='root ::= "a"{0,100000000}'), timeout=10),
    Case("3-grammar-repetition-exactly-1e8", COMPLETIONS, completion(grammar='root ::= "a"{100000000}'), timeout=10),
    Case("3-json_schema-maxItems-1e9", CHAT,
         json_schema({"type": "array", "items": {"type": "integer"}, "maxItems": 10**9}), timeout=10),
]
