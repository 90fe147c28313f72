"""Shared fixtures: a stub-backed engine for unit tests, the real one for model tests."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator

import pytest

# Keep the default /dev/shm tier of every engine the tests create out of the real
# /dev/shm/kvllama-<uid>: rows from one run must not leak into the next.
os.environ["KVLLAMA_SHM_DIR"] = tempfile.mkdtemp(prefix="kvllama-test-shm-")

import kvllama
from kvllama.backend.stub import StubBackend, StubConfig


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Quick subset first: stub unit tests, then real-model tests, slow ones last."""
    for item in items:
        if any(part in str(item.fspath) for part in ("tests/model/", "tests/server/", "tests/hostile/")):
            item.add_marker(pytest.mark.model)

    def rank(item: pytest.Item) -> int:
        if item.get_closest_marker("model") is None:
            return 0
        return 2 if item.get_closest_marker("slow") else 1

    items.sort(key=rank)


@pytest.fixture
def stub_engine() -> Iterator[Callable[..., tuple[kvllama.Engine, StubBackend]]]:
    """Call with StubConfig fields (and cache=CacheConfig to enable the KV cache).

    Returns (engine with model "s" loaded, its stub backend).
    """
    engines: list[kvllama.Engine] = []
    backends: list[StubBackend] = []

    def make(cache: object = None, load: dict[str, object] | None = None,
             **config: object) -> tuple[kvllama.Engine, StubBackend]:
        backend = StubBackend(StubConfig(**config))  # type: ignore[arg-type]
        engine = kvllama.Engine(cache=cache, backend_factory=lambda _path, _opts: backend)  # type: ignore[arg-type]
        engine.load_model("s", **(load or {}))
        engines.append(engine)
        backends.append(backend)
        return engine, backend

    yield make
    for engine in engines:
        engine.close()
    # Every stub test also checks the exactness rule that llama.cpp's batch split imposes.
    assert [b.uneven_splits for b in backends] == [0] * len(backends), "a pass llama.cpp would split unevenly"
    assert [b.kernel_mismatches for b in backends] == [0] * len(backends), "rows in another kernel class"


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    import shutil

    shutil.rmtree(os.environ["KVLLAMA_SHM_DIR"], ignore_errors=True)
