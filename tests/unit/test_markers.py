"""The text-level marker router and thinking signatures."""

from __future__ import annotations

from kvllama.decoding.markers import PRESETS, MarkerRouter, MarkerStrings
from kvllama.signing import sign_thinking, verify_thinking

QWEN = PRESETS["qwen3"]


def route(router: MarkerRouter, pieces: list[str]) -> list[tuple[str, str]]:
    out = []
    for p in pieces:
        out += router.push(p)
    out += router.flush()
    merged: list[tuple[str, str]] = []
    for kind, text in out:  # join consecutive pieces of one channel for readable asserts
        if merged and merged[-1][0] == kind and kind in ("text", "thinking", "tool_call"):
            merged[-1] = (kind, merged[-1][1] + text)
        else:
            merged.append((kind, text))
    return [(k, t) for k, t in merged if t or k.endswith("_end")]


def test_markers_split_over_pieces_never_leak():
    pieces = ["<th", "ink>", "plan", " it</", "think", ">", "Hi <tool", "_call>{}", "</tool_call", ">"]
    assert route(MarkerRouter(QWEN), pieces) == [
        ("thinking", "plan it"), ("thinking_end", ""), ("text", "Hi "),
        ("tool_call", "{}"), ("tool_call_end", ""),
    ]


def test_a_marker_prefix_that_does_not_complete_is_released_to_its_channel():
    assert route(MarkerRouter(QWEN), ["a <th", "ree"]) == [("text", "a <three")]
    expected = [("thinking", "x </thing"), ("thinking_end", "")]
    assert route(MarkerRouter(QWEN), ["<think>x </thin", "g"]) == expected


def test_disabled_thinking_passes_markers_through_as_text():
    assert route(MarkerRouter(QWEN, thinking_enabled=False), ["<think>x</think>y"]) == [
        ("text", "<think>x</think>y")
    ]


def test_budget_ends_thinking_and_swallows_late_markers():
    router = MarkerRouter(QWEN, thinking_budget_tokens=2)
    items = route(router, ["<think>", "a", "b", "c", "</think>", "d"])
    assert items == [("thinking", "ab"), ("thinking_end", ""), ("text", "cd")]
    assert router.budget_spent


def test_greedy_only_inside_tool_call_syntax_not_payload():
    markers = MarkerStrings(tool_call={"start": "<c>", "end": "</c>", "payload_start": "<p>",
                                       "payload_end": "</p>"})
    router = MarkerRouter(markers)
    states = []
    for piece in ["hi", "<c>", "name", "<p>", "free text", "</p>", "x", "</c>", "bye"]:
        router.push(piece)
        states.append(router.greedy_now)
    assert states == [False, True, True, False, False, True, True, False, False]
    items = route(MarkerRouter(markers), ["<c>a<p>b</p>c</c>"])
    assert items == [("tool_call", "a<p>b</p>c"), ("tool_call_end", "")]


def test_open_spans_are_closed_at_the_end():
    expected = [("thinking", "unfinished"), ("thinking_end", "")]
    assert route(MarkerRouter(QWEN), ["<think>unfinished"]) == expected


def test_signatures_verify_and_reject_tampering():
    sig = sign_thinking(b"key", "private thoughts")
    assert sig and verify_thinking(b"key", "private thoughts", sig)
    assert not verify_thinking(b"key", "private thoughts!", sig)
    assert not verify_thinking(b"other", "private thoughts", sig)
    assert sign_thinking(None, "x") == ""
