"""Fixtures of the hostile-input suite (issue #9); the harness itself is in hostile_support.py.

Every case runs against one real ``kvllama serve`` subprocess (restarted when
a case kills or wedges it); see hostile_support for what is checked after each.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).parent
# The suite's helper modules (hostile_support, hostile_cases, hostile_strategies) import by
# name: pytest runs with --import-mode=importlib, which does not put test folders on sys.path.
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from hostile_support import INCIDENTS, Hostile, ServerProcess  # noqa: E402


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The whole folder is slow (tests/conftest.py marks it ``model`` by path)."""
    for item in items:
        if HERE in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.slow)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if INCIDENTS:
        terminalreporter.section("hostile inputs: server deaths and wedges")
        for line in INCIDENTS:
            terminalreporter.write_line(line)


@pytest.fixture(scope="session")
def server_process() -> Iterator[ServerProcess]:
    """The one ``kvllama serve`` child of this session (KVLLAMA_HOSTILE_KEEP_LOG=1 keeps its log)."""
    workdir = Path(tempfile.mkdtemp(prefix="kvllama-hostile-"))
    server = ServerProcess(workdir)
    server.start()
    try:
        yield server
    finally:
        server.stop()
        if os.environ.get("KVLLAMA_HOSTILE_KEEP_LOG"):
            print(f"hostile suite server log: {server.log_path}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
def hostile(server_process: ServerProcess, request: pytest.FixtureRequest) -> Iterator[Hostile]:
    """A case's handle on the server; a new server first if an earlier case broke this one.

    A case that leaves the server bloated (``restart_after``) gets it replaced afterwards,
    so what it did cannot make later cases fail.
    """
    if not server_process.verified and server_process.problem() is not None:
        server_process.start()
    server_process.verified = False
    h = Hostile(server_process, request.node.name)
    try:
        yield h
    finally:
        h.close()
        if h.restart_after:
            server_process.start()
