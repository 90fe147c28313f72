"""Thinking and tool calls end to end: real model (forced by a grammar), real server, official SDKs."""

from __future__ import annotations

import json

import anthropic
import pytest

AGENT = "gemma-agent"  # loaded with markers="qwen3" (tests/server/conftest.py)
TOOL_GRAMMAR = (
    r'root ::= " Let me check." "<tool_call>" '
    r'"{\"name\": \"lookup\", \"arguments\": {\"city\": \"" [A-Za-z]{2,8} "\"}}" "</tool_call>"'
)
THINK_GRAMMAR = r'root ::= "<think>" " The user wants a colour" "</think>" " Blue."'
TOOLS = [{"type": "function", "function": {"name": "lookup", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}}}}]


def test_openai_tool_calls_parse_streamed_and_not(oai):
    messages = [{"role": "user", "content": "What is the weather in Paris?"}]
    reply = oai.chat.completions.create(model=AGENT, messages=messages, tools=TOOLS, max_tokens=80,
                                        temperature=0, extra_body={"grammar": TOOL_GRAMMAR})
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls"
    call = choice.message.tool_calls[0]
    assert call.function.name == "lookup" and "city" in json.loads(call.function.arguments)
    stream = oai.chat.completions.create(model=AGENT, messages=messages, tools=TOOLS, max_tokens=80,
                                         temperature=0, stream=True, extra_body={"grammar": TOOL_GRAMMAR})
    names = [tc.function.name for chunk in stream for tc in (chunk.choices[0].delta.tool_calls or [])
             if tc.function and tc.function.name]
    assert names == ["lookup"]


def test_anthropic_thinking_block_signature_accepted_and_tampering_refused(claude):
    messages = [{"role": "user", "content": "Name a colour."}]
    with claude.messages.stream(model=AGENT, max_tokens=60, messages=messages,
                                thinking={"type": "enabled", "budget_tokens": 1024},
                                extra_body={"grammar": THINK_GRAMMAR}) as stream:
        final = stream.get_final_message()
    thinking = next(b for b in final.content if b.type == "thinking")
    assert thinking.thinking == " The user wants a colour" and thinking.signature
    text = next(b for b in final.content if b.type == "text")
    assert "Blue" in text.text
    history = [*messages, {"role": "assistant", "content": [
        {"type": "thinking", "thinking": thinking.thinking, "signature": thinking.signature},
        {"type": "text", "text": text.text}]}, {"role": "user", "content": "Another?"}]
    ok = claude.messages.create(model=AGENT, max_tokens=8, messages=history)
    assert ok.content
    history[1]["content"][0]["thinking"] = "something I never thought"
    with pytest.raises(anthropic.BadRequestError):
        claude.messages.create(model=AGENT, max_tokens=8, messages=history)


def test_anthropic_tool_use_block(claude):
    reply = claude.messages.create(
        model=AGENT, max_tokens=80, messages=[{"role": "user", "content": "Weather in Rome?"}],
        tools=[{"name": "lookup", "description": "weather", "input_schema": {
            "type": "object", "properties": {"city": {"type": "string"}}}}],
        extra_body={"grammar": TOOL_GRAMMAR},
    )
    assert reply.stop_reason == "tool_use"
    block = next(b for b in reply.content if b.type == "tool_use")
    assert block.name == "lookup" and "city" in block.input and block.id.startswith("toolu_")


def test_a_tool_call_sent_back_is_rendered_exactly_as_the_model_produced_it(oai, claude, served):
    # Sampled as '<tool_call>{"name": "lookup", ...}</tool_call>' after " Let me check."; sent back
    # as structured data it would be rendered by the template ("Tool call: lookup(...)" here).
    messages = [{"role": "user", "content": "What is the weather in Paris?"}]
    reply = oai.chat.completions.create(model=AGENT, messages=messages, tools=TOOLS, max_tokens=80,
                                        temperature=0, extra_body={"grammar": TOOL_GRAMMAR})
    call = reply.choices[0].message.tool_calls[0]
    turn = reply.choices[0].message.model_dump(exclude_none=True)
    history = [*messages, turn, {"role": "tool", "tool_call_id": call.id, "content": "sunny"}]
    prompt = served.engine.apply_chat_template(AGENT, history)
    assert ' Let me check.<tool_call>{"name": "lookup", "arguments": {"city": "' in prompt
    assert "Tool call: lookup" not in prompt
    edited = [*messages, {**turn, "tool_calls": [{**turn["tool_calls"][0], "id": "call_other_0"}]},
              history[-1]]
    assert "Tool call: lookup" in served.engine.apply_chat_template(AGENT, edited)
    follow = oai.chat.completions.create(model=AGENT, messages=history, tools=TOOLS, max_tokens=4,
                                         temperature=0)
    assert follow.usage.prompt_tokens > reply.usage.prompt_tokens
    # The Anthropic form of the same id (toolu_...) replays the same turn.
    block = claude.messages.create(model=AGENT, max_tokens=80, messages=messages, tools=[
        {"name": "lookup", "description": "weather", "input_schema": {"type": "object"}}],
        extra_body={"grammar": TOOL_GRAMMAR})
    use = next(b for b in block.content if b.type == "tool_use")
    anthropic_history = [*messages, {"role": "assistant", "content": [b.model_dump() for b in block.content]},
                         {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id,
                                                       "content": "sunny"}]}]
    rendered = served.engine.apply_chat_template(AGENT, anthropic_history)
    assert "<tool_call>" in rendered and "Tool call: lookup" not in rendered
