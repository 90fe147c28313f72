"""Property-based hostile inputs (hypothesis) over the request schemas, against the real server.

For each POST route, bodies drawn from hostile_strategies (valid-ish and
hostile, built from the pydantic request models) are sent to the real
``kvllama serve`` process. Property: the answer is a 2xx or 4xx within the
time limit, JSON (or a well-formed event stream), and the server process is
alive and healthy afterwards; the reference request is compared every
``REFERENCE_EVERY`` examples and at the end.

Runs are deterministic by default (``derandomize``), so CI sees the same
examples each time; ``KVLLAMA_HOSTILE_RANDOM=1`` explores new ones and
``KVLLAMA_HOSTILE_EXAMPLES=N`` changes how many. Shrinking is off: each step
would be another request, and a failing example is reported as drawn.
"""

from __future__ import annotations

import os
from typing import Any

import pytest
from hostile_strategies import HOSTILE_BODIES, VALIDISH_BODIES, encode, encodings
from hostile_support import CASE_TIMEOUT, Hostile, answer_problem
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

EXAMPLES = int(os.environ.get("KVLLAMA_HOSTILE_EXAMPLES", "40"))
REFERENCE_EVERY = 10
SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    derandomize=not os.environ.get("KVLLAMA_HOSTILE_RANDOM"),
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=list(HealthCheck),
    print_blob=True,
)


def check_example(hostile: Hostile, path: str, body: Any, how: str, counter: dict[str, int]) -> None:
    content = encode(body, how)
    headers = {"content-type": "application/json"}
    r, error, seconds = hostile.send("POST", path, content, headers, CASE_TIMEOUT)
    problem = answer_problem(r, error, seconds, CASE_TIMEOUT)
    server = hostile.server
    if problem is None and not (server.alive() and server.pid == hostile.pid and server.healthy()):
        problem = "the server did not survive"
    counter["n"] += 1
    if problem is None and counter["n"] % REFERENCE_EVERY == 0:
        problem = server.problem(hostile.pid)
    if problem is not None:
        hostile.fail([f"POST {path} ({how}) body {content[:2000]!r}:", problem])


@pytest.mark.parametrize("path", sorted(VALIDISH_BODIES))
def test_validish_bodies(hostile: Hostile, path: str) -> None:
    counter = {"n": 0}

    @SETTINGS
    @given(body=VALIDISH_BODIES[path], how=encodings())
    def prop(body: dict[str, Any], how: str) -> None:
        check_example(hostile, path, body, how, counter)

    prop()
    hostile.assert_survived()


@pytest.mark.parametrize("path", sorted(HOSTILE_BODIES))
def test_hostile_bodies(hostile: Hostile, path: str) -> None:
    counter = {"n": 0}

    @SETTINGS
    @given(body=HOSTILE_BODIES[path], how=encodings())
    def prop(body: dict[str, Any], how: str) -> None:
        check_example(hostile, path, body, how, counter)

    prop()
    hostile.assert_survived()


@pytest.mark.parametrize("path", sorted(HOSTILE_BODIES))
def test_bodies_of_another_route(hostile: Hostile, path: str) -> None:
    counter = {"n": 0}
    others = st.one_of(*(s for p, s in VALIDISH_BODIES.items() if p != path))

    @settings(SETTINGS, max_examples=max(1, EXAMPLES // 4))
    @given(body=others)
    def prop(body: dict[str, Any]) -> None:
        check_example(hostile, path, body, "escaped", counter)

    prop()
    hostile.assert_survived()
