"""Exact tool-call replay: which assistant messages are rendered as the turn the model produced."""

from __future__ import annotations

from kvllama.decoding.tool_memory import ToolCallMemory, span_of
from kvllama.events import ToolCallEndEvent
from kvllama.replies.reducer import Reducer


def _call(call_id: str) -> dict:
    return {"id": call_id, "type": "function", "function": {"name": "f", "arguments": "{}"}}


def test_span_of_reads_both_id_forms_and_nothing_else():
    assert span_of("call_abc123_0") == span_of("toolu_abc123_1") == "abc123"
    assert span_of("call_abc") is None and span_of("call_abc_x") is None
    assert span_of("fc_abc_0") is None and span_of(None) is None


def test_a_turns_calls_replay_as_its_text_and_anything_else_does_not():
    memory = ToolCallMemory()
    memory.remember([("s1", 2)], "<tool_call>[two calls as sampled]</tool_call>")
    turn = {"role": "assistant", "content": "", "tool_calls": [_call("call_s1_0"), _call("toolu_s1_1")]}
    sampled = "<tool_call>[two calls as sampled]</tool_call>"
    assert memory.replay([turn]) == [{"role": "assistant", "content": sampled}]
    one_dropped = {**turn, "tool_calls": [_call("call_s1_0")]}
    unknown = {**turn, "tool_calls": [_call("call_s9_0"), _call("call_s1_1")]}
    user = {"role": "user", "content": "hi", "tool_calls": [_call("call_s1_0")]}
    for message in (one_dropped, unknown, user):
        assert memory.replay([message]) == [message]


def test_the_memory_is_bounded():
    memory = ToolCallMemory(max_turns=2)
    for k in range(3):
        memory.remember([(f"s{k}", 1)], f"turn {k}")
    oldest = {"role": "assistant", "content": "", "tool_calls": [_call("call_s0_0")]}
    newest = {"role": "assistant", "content": "", "tool_calls": [_call("call_s2_0")]}
    assert memory.replay([oldest]) == [oldest]
    assert memory.replay([newest])[0]["content"] == "turn 2"


def test_the_reducer_names_each_call_of_a_span():
    reducer = Reducer()
    text = '[{"name": "a", "arguments": {}}, {"name": "b", "arguments": {"x": 1}}]'
    reducer.add(ToolCallEndEvent(text, text.encode(), "span7"))
    assert [b.call.id for b in reducer.reply.calls] == ["call_span7_0", "call_span7_1"]
