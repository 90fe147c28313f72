"""Issue #9, case 3: requests that made llama.cpp's grammar parser allocate until out of memory.

The server runs under RLIMIT_AS (hostile_support.ADDRESS_SPACE_LIMIT), so a
regression ends in std::bad_alloc or a dead process rather than a machine
out of memory; the tight time limit and the bound on resident-memory growth
make it a failure either way. A case that bloated the server has it
replaced before the next case.
"""

from __future__ import annotations

import pytest
from hostile_cases import ALLOCATION_CASES, Case
from hostile_support import Hostile, answer_problem

# Resident memory the server may gain on one refused request.
MAX_GROWTH = 512 << 20


@pytest.mark.parametrize("case", ALLOCATION_CASES, ids=lambda c: c.id)
def test_allocation_case(hostile: Hostile, case: Case) -> None:
    before = hostile.server.rss_bytes()
    headers = {"content-type": "application/json", **case.headers}
    r, error, seconds = hostile.send(case.method, case.path, case.content(), headers, case.timeout)
    problems = [p for p in (answer_problem(r, error, seconds, case.timeout, case.expect),) if p]
    if hostile.server.alive():
        growth = hostile.server.rss_bytes() - before
        if growth > MAX_GROWTH // 2:
            hostile.restart_after = True
        if growth > MAX_GROWTH:
            problems.append(f"the server's resident memory grew by {growth >> 20} MiB")
    if problems:
        if error is not None:  # it may still be allocating: do not let it run into the next case
            hostile.restart_after = True
        hostile.fail(problems)
    hostile.assert_survived()
