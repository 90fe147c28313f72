"""Hypothesis strategies for request bodies, valid-ish and hostile, built from the server's pydantic models.

Every field of a request model gets either a plausible value (``st.from_type``
of its annotation, or a hand-written strategy where the type alone would
generate slow or pointless requests, e.g. ``max_tokens``) or an arbitrary
JSON value: wrong types, lone surrogates, NUL characters, chat-template
markers, huge and non-finite numbers. Unknown fields are sprinkled in too.
Bodies are sent as JSON text with surrogates escaped (valid JSON) or raw as
invalid UTF-8 (see :func:`encodings`).
"""

# ruff: noqa: E501 (tables of request bodies read better one per line)

from __future__ import annotations

import json
import typing
from typing import Any

from hypothesis import strategies as st
from pydantic import BaseModel

from kvllama.server.anthropic.schemas import CountTokensRequest, MessagesRequest
from kvllama.server.openai.schemas import ChatCompletionRequest, CompletionRequest, EmbeddingRequest

VOCAB = 262_144

# Text with every code point, lone surrogates included (category Cs is excluded by default).
any_char = st.characters(exclude_categories=())
special_text = st.sampled_from([
    "", " ", "\x00", "\ud800", "\udfff", "a\udc00b", "\ufeff", "\u202e", "\n\nUser:", "\nAssistant:",
    "<bos>", "<eos>", "<start_of_turn>user\n", "<end_of_turn>", "<think>", "</think>", "<tool_call>",
    "{{ 7*7 }}", "{% for x in range(99999999) %}x{% endfor %}", "{{ ''.__class__.__mro__ }}",
    "\U0001f600" * 50, "a" * 3000, "\\", '"', "%s%n", "../../etc/passwd",
])
text = st.one_of(st.text(any_char, max_size=24), special_text)
big_ints = st.sampled_from([-(2**63), -(2**31), -1, 0, 1, 2**31 - 1, 2**31, 2**32 + 5, 2**63, 2**64, 10**30])
numbers = st.one_of(
    st.integers(), big_ints,
    st.floats(allow_nan=True, allow_infinity=True),  # NaN / Infinity: Python's json accepts them
)
json_leaf = st.one_of(st.none(), st.booleans(), numbers, text)
json_any = st.recursive(
    json_leaf,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(text, inner, max_size=3)),
    max_leaves=8,
)

GRAMMARS = st.sampled_from([
    'root ::= "yes" | "no"', "root ::= [a-z]{0,5}", 'root ::= "\\x00"', 'root ::= "\ud800"',
    "root ::= [^\\x00-\\U0010FFFF]", 'root ::= root "a" | "b"', "root ::= ((", 'root ::= "a"{3,5}',
    'root ::= [0-9]+ "." [0-9]*', "root ::= x\nx ::= y\ny ::= x", "", 'root ::= "\\u0000"',
])


def _json_schemas() -> st.SearchStrategy[Any]:
    keys = st.sampled_from(["a", "b", "\ud800", "", "$ref"])
    leaf = st.one_of(
        st.fixed_dictionaries({"type": st.sampled_from(["string", "number", "integer", "boolean", "null",
                                                        "object", "array", "tensor"])},
                              optional={"minLength": st.one_of(st.integers(-2, 6), json_any),
                                        "maxLength": st.one_of(st.integers(-2, 6), json_any),
                                        "enum": st.lists(json_leaf, max_size=3), "const": json_leaf}),
        st.sampled_from([{}, True, False, {"$ref": "#"}, {"$ref": "#/$defs/missing"}, {"not": {}}]),
        json_any,
    )
    return st.recursive(leaf, lambda inner: st.one_of(
        st.fixed_dictionaries({"type": st.just("array"), "items": inner},
                              optional={"minItems": st.one_of(st.integers(-1, 4), json_any),
                                        "maxItems": st.one_of(st.integers(-1, 4), json_any)}),
        st.fixed_dictionaries({"type": st.just("object"), "properties": st.dictionaries(keys, inner, max_size=3)},
                              optional={"required": st.lists(keys, max_size=2),
                                        "additionalProperties": st.booleans()}),
        st.fixed_dictionaries({"anyOf": st.lists(inner, max_size=3)}),
        st.fixed_dictionaries({"$ref": st.just("#/$defs/d"), "$defs": st.fixed_dictionaries({"d": inner})}),
    ), max_leaves=6)


json_schemas = _json_schemas()
max_tokens = st.one_of(st.integers(-2, 6), big_ints)
token_ids = st.lists(st.one_of(st.integers(0, 5000), st.integers(-5, VOCAB + 5), big_ints), max_size=8)
chat_parts = st.lists(st.one_of(
    st.fixed_dictionaries({"type": st.just("text"), "text": text}),
    st.fixed_dictionaries({"type": st.sampled_from(["image_url", "input_audio", "file", "refusal"])},
                          optional={"image_url": json_any, "text": json_any}),
    json_any,
), max_size=3)
openai_messages = st.lists(st.fixed_dictionaries(
    {"role": st.one_of(st.sampled_from(["user", "assistant", "system", "developer", "tool"]), text),
     "content": st.one_of(text, chat_parts, st.none(), json_any)},
    optional={"name": text, "tool_call_id": json_any,
              "tool_calls": st.lists(st.fixed_dictionaries(
                  {"id": text, "type": st.just("function"),
                   "function": st.fixed_dictionaries({"name": text, "arguments": st.one_of(text, json_any)})}),
                  max_size=2)},
), max_size=3)
anthropic_blocks = st.lists(st.one_of(
    st.fixed_dictionaries({"type": st.just("text"), "text": st.one_of(text, json_any)}),
    st.fixed_dictionaries({"type": st.just("tool_use"), "id": text, "name": text, "input": json_any}),
    st.fixed_dictionaries({"type": st.just("tool_result"), "tool_use_id": text,
                           "content": st.one_of(text, st.lists(json_any, max_size=2))},
                          optional={"is_error": json_any}),
    st.fixed_dictionaries({"type": st.just("thinking"), "thinking": text}, optional={"signature": text}),
    st.fixed_dictionaries({"type": st.sampled_from(["image", "document", "redacted_thinking", "server_tool_use"])},
                          optional={"source": json_any, "data": json_any}),
    st.dictionaries(text, json_any, max_size=3),
), max_size=3)
anthropic_messages = st.lists(st.fixed_dictionaries(
    {"role": st.one_of(st.sampled_from(["user", "assistant"]), text),
     "content": st.one_of(text, anthropic_blocks, json_any)}), max_size=3)
openai_tools = st.lists(st.one_of(
    st.fixed_dictionaries({"type": st.just("function"), "function": st.fixed_dictionaries(
        {"name": text}, optional={"description": text, "parameters": json_schemas})}),
    json_any), max_size=3)
anthropic_tools = st.lists(st.one_of(
    st.fixed_dictionaries({"name": text}, optional={"description": text, "input_schema": json_schemas}),
    json_any), max_size=3)
response_formats = st.one_of(
    st.fixed_dictionaries({"type": st.sampled_from(["text", "json_object", "yaml"])}),
    st.fixed_dictionaries({"type": st.just("json_schema")},
                          optional={"json_schema": st.fixed_dictionaries(
                              {"schema": json_schemas}, optional={"name": text, "strict": json_any})}),
)
unit_floats = st.floats(0, 1)

# Hand-written value strategies by field name (the rest come from st.from_type of the annotation).
FIELD_STRATEGIES: dict[str, st.SearchStrategy[Any]] = {
    "max_tokens": max_tokens,
    "max_completion_tokens": max_tokens,
    "thinking_budget_tokens": st.one_of(st.integers(-1, 8), big_ints),
    "prompt": st.one_of(text, st.lists(text, max_size=2), token_ids, st.lists(token_ids, max_size=2)),
    "input": st.one_of(text, st.lists(text, max_size=4), token_ids, st.lists(token_ids, max_size=2)),
    "stop": st.one_of(text, st.lists(text, max_size=4)),
    "stop_sequences": st.lists(text, max_size=4),
    "seed": st.one_of(st.integers(0, 2**32 - 2), big_ints),
    "temperature": st.one_of(st.floats(0, 2), numbers),
    "top_p": st.one_of(unit_floats, numbers),
    "min_p": st.one_of(unit_floats, numbers),
    "top_k": st.one_of(st.integers(0, 100), big_ints),
    "repetition_penalty": st.one_of(st.floats(0.5, 2), numbers),
    "frequency_penalty": st.one_of(st.floats(-2, 2), numbers),
    "presence_penalty": st.one_of(st.floats(-2, 2), numbers),
    "grammar": st.one_of(GRAMMARS, text),
    "response_format": response_formats,
    "session_id": st.one_of(st.sampled_from(["hyp-s1", "hyp-s2"]), text),
    "cache_salt": st.one_of(st.sampled_from(["tenant-a", "t.b:c_d-e"]), text),
    "model": st.one_of(st.sampled_from(["default", "nope"]), text),
    "stream": st.booleans(),
    "thinking": st.one_of(st.booleans(), st.fixed_dictionaries(
        {"type": st.sampled_from(["enabled", "disabled", "maybe"])},
        optional={"budget_tokens": st.one_of(st.integers(-1, 8), big_ints)})),
    "system": st.one_of(text, anthropic_blocks),
    "metadata": json_any,
    "logprobs": st.one_of(st.none(), st.booleans(), st.integers(0, 5)),
    "logit_bias": st.one_of(st.none(), st.dictionaries(text, numbers, max_size=2)),
}
OPENAI_FIELDS = {"messages": openai_messages, "tools": openai_tools}
ANTHROPIC_FIELDS = {"messages": anthropic_messages, "tools": anthropic_tools,
                    "tool_choice": st.one_of(st.fixed_dictionaries({"type": st.sampled_from(["auto", "any", "tool"])},
                                                                   optional={"name": text}), json_any)}

# Valid-ish: the right shapes (text may still hold surrogates, NULs and template markers).
_validish_openai_messages = st.lists(st.fixed_dictionaries(
    {"role": st.sampled_from(["user", "assistant", "system"]), "content": st.one_of(text, st.lists(
        st.fixed_dictionaries({"type": st.just("text"), "text": text}), min_size=1, max_size=2))}),
    min_size=1, max_size=3)
_validish_anthropic_messages = st.lists(st.fixed_dictionaries(
    {"role": st.sampled_from(["user", "assistant"]), "content": st.one_of(text, st.lists(
        st.fixed_dictionaries({"type": st.just("text"), "text": text}), min_size=1, max_size=2))}),
    min_size=1, max_size=3)
_validish_tools = st.lists(st.fixed_dictionaries({"type": st.just("function"), "function": st.fixed_dictionaries(
    {"name": st.from_regex(r"[a-z_]{1,12}", fullmatch=True)},
    optional={"description": text, "parameters": json_schemas})}), max_size=2)
VALIDISH_FIELDS: dict[str, st.SearchStrategy[Any]] = {
    "max_tokens": st.integers(1, 6),
    "max_completion_tokens": st.integers(1, 6),
    "temperature": st.floats(0, 1),
    "top_p": st.floats(0.01, 1),
    "min_p": st.floats(0, 0.5),
    "top_k": st.integers(0, 100),
    "seed": st.integers(0, 2**32 - 2),
    "repetition_penalty": st.floats(0.8, 1.5),
    "frequency_penalty": st.floats(-2, 2),
    "presence_penalty": st.floats(-2, 2),
    "thinking_budget_tokens": st.integers(1, 8),
    "n": st.just(1),
    "logprobs": st.none(),
    "logit_bias": st.none(),
    "echo": st.just(False),
    "suffix": st.none(),
    "best_of": st.just(1),
    "top_logprobs": st.none(),
    "dimensions": st.none(),
    "model": st.just("default"),
    "session_id": st.sampled_from(["hyp-s1", "hyp-s2"]),
    "cache_salt": st.sampled_from(["tenant-a", "t.b:c_d-e"]),
    "stream_options": st.fixed_dictionaries({"include_usage": st.booleans()}),
    "tool_choice": st.none(),
    "metadata": st.none(),
    "thinking": st.none(),
}
VALIDISH_OPENAI = {**VALIDISH_FIELDS, "messages": _validish_openai_messages, "tools": _validish_tools,
                   "prompt": st.one_of(text, st.lists(st.integers(1, 5000), min_size=1, max_size=8))}
VALIDISH_ANTHROPIC = {**VALIDISH_FIELDS, "messages": _validish_anthropic_messages,
                      "tools": st.lists(st.fixed_dictionaries(
                          {"name": st.from_regex(r"[a-z_]{1,12}", fullmatch=True)},
                          optional={"description": text, "input_schema": json_schemas}), max_size=2),
                      "system": text}


def _from_annotation(annotation: Any) -> st.SearchStrategy[Any]:
    try:
        strategy = st.from_type(annotation)
        strategy.validate()
    except Exception:  # Any, forward references, pydantic-only types: arbitrary JSON instead
        return json_any
    # from_type can produce things json cannot carry (sets, bytes, models): keep only JSON-able values.
    return strategy.filter(_json_able)


def _json_able(value: Any) -> bool:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return False
    return True


def bodies(model: type[BaseModel], overrides: dict[str, st.SearchStrategy[Any]] | None = None,
           *, hostile: bool = True) -> st.SearchStrategy[dict[str, Any]]:
    """Request bodies for ``model``.

    ``hostile``: each field plausible or any JSON value, unknown fields added,
    now and then a required field left out. Otherwise valid-ish: every field
    of the right shape (its text may still be hostile). ``max_tokens`` is 4
    when not drawn, so that an accepted request stays short.
    """
    fields = {**FIELD_STRATEGIES, **(overrides or {})}
    required: dict[str, st.SearchStrategy[Any]] = {}
    optional: dict[str, st.SearchStrategy[Any]] = {}
    hints = typing.get_type_hints(model)
    for name, info in model.model_fields.items():
        key = info.alias or name
        good = fields[key] if key in fields else _from_annotation(hints.get(name, Any))
        value = st.one_of(good, good, good, json_any) if hostile else good  # mostly the right shape
        (required if info.is_required() else optional)[key] = value
    base = st.fixed_dictionaries(required, optional=optional)
    extra = st.dictionaries(text, json_any, max_size=2) if hostile else st.just({})

    def assemble(parts: tuple[dict[str, Any], dict[str, Any], list[str]]) -> dict[str, Any]:
        body, unknown, dropped = parts
        merged = {**unknown, **body}
        for key in dropped:
            merged.pop(key, None)
        if "max_tokens" in model.model_fields and "max_tokens" not in merged and "max_tokens" not in dropped:
            merged["max_tokens"] = 4
        return merged

    # Now and then a required field is left out.
    drop_one = st.sampled_from(sorted(required) or ["-"]).map(lambda k: [k])
    drops = st.one_of(*[st.just([])] * 7, drop_one) if hostile else st.just([])
    return st.tuples(base, extra, drops).map(assemble)


def encodings() -> st.SearchStrategy[str]:
    """How a body travels: JSON with \\u escapes (always valid), or UTF-8 with surrogates passed through."""
    return st.sampled_from(["escaped", "escaped", "escaped", "raw"])


def encode(body: Any, how: str) -> bytes:
    if how == "escaped":
        return json.dumps(body).encode()
    return json.dumps(body, ensure_ascii=False).encode("utf-8", "surrogatepass")


HOSTILE_BODIES: dict[str, st.SearchStrategy[dict[str, Any]]] = {
    "/v1/completions": bodies(CompletionRequest),
    "/v1/chat/completions": bodies(ChatCompletionRequest, OPENAI_FIELDS),
    "/v1/embeddings": bodies(EmbeddingRequest),
    "/v1/messages": bodies(MessagesRequest, ANTHROPIC_FIELDS),
    "/v1/messages/count_tokens": bodies(CountTokensRequest, ANTHROPIC_FIELDS),
}
VALIDISH_BODIES: dict[str, st.SearchStrategy[dict[str, Any]]] = {
    "/v1/completions": bodies(CompletionRequest, VALIDISH_OPENAI, hostile=False),
    "/v1/chat/completions": bodies(ChatCompletionRequest, VALIDISH_OPENAI, hostile=False),
    "/v1/embeddings": bodies(EmbeddingRequest, {**VALIDISH_FIELDS, "input": st.one_of(
        text, st.lists(text, min_size=1, max_size=4))}, hostile=False),
    "/v1/messages": bodies(MessagesRequest, VALIDISH_ANTHROPIC, hostile=False),
    "/v1/messages/count_tokens": bodies(CountTokensRequest, VALIDISH_ANTHROPIC, hostile=False),
}
