"""The Responses API's store (bounds, tenants, restarts) and the tool_choice grammars, without a model."""

from __future__ import annotations

import re
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kvllama.gbnf import check_grammar
from kvllama.server.errors import ApiError
from kvllama.server.responses.schemas import items_to_messages
from kvllama.server.responses.store import ResponseStore, StoredResponse
from kvllama.server.tool_choice import forced_call_grammar, no_call_grammar


def stored(rid: str, created: float | None = None) -> StoredResponse:
    when = time.time() if created is None else created
    return StoredResponse(id=rid, created_at=when, response={"id": rid}, input_items=[], messages=[],
                          instructions=None, transcript=[1, 2, 3])


@pytest.mark.parametrize("on_disk", [False, True])
def test_a_store_is_bounded_by_count_and_age_and_scoped_by_tenant(tmp_path, on_disk):
    store = ResponseStore(tmp_path if on_disk else None, max_count=3, max_age=60)
    for i in range(5):
        store.put("a", stored(f"r{i}", created=time.time() + i * 1e-3))
    assert len(store) == 3 and store.get("a", "r0") is None and store.get("a", "r4") is not None
    assert store.get("b", "r4") is None and store.get(None, "r4") is None  # another tenant: unknown
    store.put(None, stored("old", created=time.time() - 120))
    assert store.get(None, "old") is None  # expired
    assert store.delete("a", "r4") and not store.delete("a", "r4")
    store.close()


def test_a_store_on_disk_survives_a_restart(tmp_path):
    first = ResponseStore(tmp_path)
    first.put("t", stored("keep"))
    first.close()
    again = ResponseStore(tmp_path)
    got = again.get("t", "keep")
    assert got is not None and got.transcript == [1, 2, 3] and got.response == {"id": "keep"}
    again.close()


def test_items_become_messages_and_bad_items_name_their_place():
    messages = items_to_messages([
        {"role": "user", "content": [{"type": "input_text", "text": "hi"}]},
        {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
        {"type": "function_call", "call_id": "c2", "name": "g", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "c1", "output": "one"},
        {"type": "reasoning", "summary": []},
    ])
    assert messages[0] == {"role": "user", "content": [{"type": "text", "text": "hi"}]}
    assert [c["id"] for c in messages[1]["tool_calls"]] == ["c1", "c2"]  # one assistant turn
    assert messages[2] == {"role": "tool", "tool_call_id": "c1", "content": "one"} and len(messages) == 3
    with pytest.raises(ApiError) as bad:
        items_to_messages([{"role": "user", "content": "x"}, {"type": "file_search_call"}])
    assert bad.value.param == "input[1].type"


MARKERS = {"start": "<tool_call>", "end": "</tool_call>"}


def _automaton(grammar: str) -> dict[int, tuple[dict[str, int], str]]:
    """The no-call grammar's rules read back: state -> (char -> next state, excluded class)."""
    table = {}
    for line in grammar.splitlines()[1:]:
        state = int(line.split()[0][1:])
        moves = {m.group(1).encode().decode("unicode_escape"): int(m.group(2))
                 for m in re.finditer(r'"((?:[^"\\]|\\.)+)" s(\d+)', line)}
        table[state] = (moves, re.search(r"\[\^(.*?)\] s0", line).group(1))  # type: ignore[union-attr]
    return table


@given(st.text(alphabet="<tool_cal>/x ", max_size=40))
def test_the_no_call_grammar_admits_exactly_the_texts_without_the_marker(text):
    table = _automaton(no_call_grammar(MARKERS))
    state, accepted = 0, True
    for ch in text:
        moves, _other = table[state]
        if ch in moves:
            state = moves[ch]
        elif ch in "<tool_cal>":  # a marker character with no move: it would complete the marker
            accepted = False
            break
        else:
            state = 0
    assert accepted == ("<tool_call>" not in text)


def test_the_grammars_parse_and_refuse_what_they_cannot_force():
    tools = [{"type": "function", "function": {"name": "get", "parameters": {"type": "object"}}}]
    check_grammar(no_call_grammar(MARKERS))
    check_grammar(forced_call_grammar(MARKERS, tools, ""))
    assert '"<tool_call>"' in forced_call_grammar(MARKERS, tools, "get")
    for markers, name in ((None, ""), (MARKERS, "missing")):
        with pytest.raises(ApiError):
            forced_call_grammar(markers, tools, name)
