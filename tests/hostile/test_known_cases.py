"""Issue #9's hostile requests (cases 1, 2, 4, 6) and our own, each against the real server.

Each case: the answer is a 2xx or 4xx within the time limit, JSON (or a
well-formed event stream), and afterwards the server is the same process,
healthy, and gives the reference request's answer unchanged.
"""

from __future__ import annotations

import pytest
from hostile_cases import ISSUE_CASES, OWN_CASES, Case
from hostile_support import Hostile, answer_problem


def run_case(hostile: Hostile, case: Case) -> None:
    headers = {"content-type": "application/json", **case.headers}
    content = None if case.method == "GET" and case.body is None and case.raw is None else case.content()
    r, error, seconds = hostile.send(case.method, case.path, content, headers, case.timeout)
    problem = answer_problem(r, error, seconds, case.timeout, case.expect)
    if problem is not None:
        hostile.fail([problem])  # says whether the server survived it too
    hostile.assert_survived()


@pytest.mark.parametrize("case", ISSUE_CASES, ids=lambda c: c.id)
def test_issue_case(hostile: Hostile, case: Case) -> None:
    run_case(hostile, case)


@pytest.mark.parametrize("case", OWN_CASES, ids=lambda c: c.id)
def test_own_case(hostile: Hostile, case: Case) -> None:
    run_case(hostile, case)
