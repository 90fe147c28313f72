"""Thinking and tool calls on real tokens: a grammar makes Gemma 3 270M emit the markers."""

from __future__ import annotations

import json

import pytest

import kvllama
from kvllama.events import ThinkingEndEvent, ToolCallEndEvent
from kvllama.signing import verify_thinking

KEY = b"test-signing-key"
GRAMMAR = (
    r'root ::= "<think>" " I should look it up" "</think>" " Let me check." "<tool_call>" '
    r'"{\"name\": \"lookup\", \"arguments\": {\"city\": \"" [A-Za-z]{2,8} "\"}}" "</tool_call>"'
)
PROMPT = "Question: what is the capital of France?"


@pytest.fixture(scope="module")
def agent_engine():
    with kvllama.Engine(cache=None, thinking_key=KEY) as eng:
        eng.load_model("qwenish", markers="qwen3")
        yield eng


def test_thinking_and_tool_call_channels_with_signature(agent_engine):
    events = list(agent_engine.infer("qwenish", PROMPT, max_tokens=90, temperature=0, grammar=GRAMMAR))
    end = next(e for e in events if isinstance(e, ThinkingEndEvent))
    assert end.text == " I should look it up"
    assert verify_thinking(KEY, end.text, end.signature)
    assert not verify_thinking(KEY, end.text + " (edited)", end.signature)
    call = next(e for e in events if isinstance(e, ToolCallEndEvent))
    assert json.loads(call.text)["name"] == "lookup" and call.raw == call.text.encode()
    result = agent_engine.complete("qwenish", PROMPT, max_tokens=90, temperature=0, grammar=GRAMMAR)
    assert result.reply.strip() == "Let me check."  # no marker text leaks into the reply
    assert result.thinking == end.text and result.tool_calls == (call.text,)


def test_thinking_budget_and_disabled_thinking(agent_engine):
    budget = agent_engine.complete("qwenish", PROMPT, max_tokens=90, temperature=0, grammar=GRAMMAR,
                                   thinking_budget_tokens=3)
    assert 0 < len(budget.thinking) < len(" I should look it up")
    assert "look it up" in budget.reply  # the rest of the thought is routed as text
    off = agent_engine.complete("qwenish", PROMPT, max_tokens=90, temperature=0, grammar=GRAMMAR,
                                thinking=False)
    assert off.thinking == "" and off.reply.startswith("<think>")


def test_tool_call_syntax_is_sampled_greedily(agent_engine):
    # One-character markers, so the hot sampler cannot spell the start marker differently.
    agent_engine.load_model("atcall", tool_call_markers={"start": "@", "end": "#"})
    free = r'root ::= "@" "{\"city\": \"" [a-z]{3,12} "\"}" "#"'
    params = {"max_tokens": 40, "temperature": 1.5, "top_k": 0, "top_p": 1.0, "min_p": 0.0, "grammar": free}
    calls = {agent_engine.complete("atcall", PROMPT, seed=seed, **params).tool_calls for seed in (1, 2, 3)}
    assert len(calls) == 1  # identical bytes whatever the seed: the syntax chain is greedy
    plain = {agent_engine.complete("qwenish", PROMPT, seed=seed, **params).reply for seed in (1, 2, 3)}
    assert len(plain) > 1  # without markers the same grammar samples freely
