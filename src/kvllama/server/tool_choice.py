"""``tool_choice`` that forces a call: a grammar that makes the model write one, in its own markers.

Small models rarely call a tool on their own; a client that says a call must
come (``"required"``, or a named function) gets one whatever the model would
have written: the sampler's grammar admits exactly the model's tool-call start
marker, a JSON object ``{"name": ..., "arguments": ...}`` whose arguments
follow that tool's parameters schema, and the end marker. The reply reducer
then parses it like any call the model made. Models loaded without tool-call
markers cannot be forced (a 400 says how to load them).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

from kvllama.server.errors import ApiError
from kvllama.server.grammar import json_schema_grammar


def forced_call_grammar(markers: Mapping[str, str] | None, tools: Sequence[Mapping[str, Any]], name: str,
                        *, param: str = "tool_choice") -> str:
    """GBNF for one call to ``name`` ("" : to any of ``tools``, in the function shape)."""
    if markers is None:
        raise ApiError(400, "tool_choice forces a tool call, which needs a model loaded with tool-call "
                            "markers (markers='qwen3', 'hermes', ... or tool_call_markers)", param=param)
    functions = [t["function"] for t in tools if isinstance(t.get("function"), Mapping)]
    if name:
        functions = [f for f in functions if f.get("name") == name]
        if not functions:
            raise ApiError(400, f"tool_choice names {name!r}, which is not one of the request's tools",
                           param=param)
    if not functions:
        raise ApiError(400, "tool_choice 'required' needs at least one function tool", param=param)
    calls = [{"type": "object", "properties": {"name": {"const": f["name"]},
                                               "arguments": f.get("parameters") or {"type": "object"}},
              "required": ["name", "arguments"]} for f in functions]
    schema = calls[0] if len(calls) == 1 else {"anyOf": calls}
    body = re.sub(r"^root ::=", "call ::=", json_schema_grammar(schema), count=1, flags=re.M)
    start, end = markers["start"], markers["end"]
    if "payload_start" in markers:
        start, end = start + markers["payload_start"], markers["payload_end"] + end
    return f"root ::= {json.dumps(start)} \"\\n\" call \"\\n\" {json.dumps(end)}\n{body}"


def no_call_grammar(markers: Mapping[str, str]) -> str:
    """GBNF for any text that never contains the tool-call start marker (``tool_choice: "none"``).

    The automaton of string matching (Knuth-Morris-Pratt) written as rules: ``s<i>`` means
    "the last ``i`` characters are the marker's first ``i``"; every character moves to the
    state it leads to, and the one that would complete the marker has no rule. Any state may
    end, so the model stops when it likes.
    """
    marker = markers["start"]
    k = len(marker)
    fail = [0] * k
    for i in range(1, k):
        j = fail[i - 1]
        while j and marker[i] != marker[j]:
            j = fail[j - 1]
        fail[i] = j + 1 if marker[i] == marker[j] else 0

    def step(state: int, char: str) -> int:
        while state and marker[state] != char:
            state = fail[state - 1]
        return state + 1 if marker[state] == char else 0

    chars = sorted(set(marker))
    others = "".join(_class_char(c) for c in chars)
    rules = []
    for state in range(k):
        moves = [f"{json.dumps(c)} s{nxt}" for c in chars if (nxt := step(state, c)) < k]
        rules.append(f"s{state} ::= \"\" | [^{others}] s0" + "".join(f" | {m}" for m in moves))
    return "root ::= s0\n" + "\n".join(rules)


def _class_char(c: str) -> str:
    return "\\" + c if c in "^]\\-[" else c
