"""The accepted shapes of a tool call's text (docs/agents.md), and what is refused."""

from __future__ import annotations

import pytest

from kvllama.replies.tool_calls import ToolCall, parse_tool_calls
from kvllama.server.anthropic.rendering import tool_use_id as anthropic_id
from kvllama.server.openai.rendering import call_id as openai_id

WEATHER = ToolCall("get_weather", {"city": "Paris"})


@pytest.mark.parametrize("text", [
    '{"name": "get_weather", "arguments": {"city": "Paris"}}',  # Hermes / Qwen
    '\n{"name": "get_weather", "arguments": "{\\"city\\": \\"Paris\\"}"}\n',  # arguments as a JSON string
    '{"name": "get_weather", "parameters": {"city": "Paris"}}',  # Llama 3.x
    '{"name": "get_weather", "input": {"city": "Paris"}}',  # Anthropic
    '{"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}',  # OpenAI
    '```json\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n```',  # fenced
    '\nprint(get_weather(city="Paris"))\n',  # Gemma tool_code
    "get_weather(city='Paris')",
])
def test_accepted_shapes(text):
    assert parse_tool_calls(text) == [WEATHER]


def test_lists_nested_values_and_missing_arguments():
    calls = parse_tool_calls('[{"name": "a"}, {"name": "b", "arguments": {"x": [1, {"y": null}]}}]')
    assert calls == [ToolCall("a", {}), ToolCall("b", {"x": [1, {"y": None}]})]
    assert parse_tool_calls('{"name": "a", "arguments": null}') == [ToolCall("a", {})]
    assert parse_tool_calls('{"name": "a", "arguments": ""}') == [ToolCall("a", {})]
    assert parse_tool_calls("tools.search(q='x', n=3)") == [ToolCall("tools.search", {"q": "x", "n": 3})]
    assert WEATHER.arguments_json == '{"city": "Paris"}'


@pytest.mark.parametrize("text", [
    "", "   ", "hello there", '{"arguments": {}}', '{"name": 3}', '{"name": "a", "arguments": [1]}',
    '{"name": "a", "arguments": "not json"}', "[]", '[{"name": "a"}, 7]', "f(1, 2)", "f(x=g())",
    "f(**kw)", "f(x={1, 2})", "1 + 2", "(lambda: 0)()",
])
def test_refused_shapes(text):
    assert parse_tool_calls(text) is None


def test_ids_have_the_vendor_prefixes_and_are_unique():
    assert anthropic_id().startswith("toolu_") and openai_id().startswith("call_")
    assert len({anthropic_id() for _ in range(100)}) == 100
