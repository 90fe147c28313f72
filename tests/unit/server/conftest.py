"""Stub-engine fixtures for the HTTP server: a TestClient, and helpers to read SSE."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pytest
from starlette.testclient import TestClient

import kvllama
from kvllama.backend.stub import StubBackend
from kvllama.request import GenerationRequest
from kvllama.server import ServerConfig, create_app

Made = tuple[TestClient, kvllama.Engine, StubBackend]


@pytest.fixture
def make_client(
    stub_engine: Callable[..., tuple[kvllama.Engine, StubBackend]],
) -> Iterator[Callable[..., Made]]:
    """make_client(config=None, **stub_config) -> (client, engine, backend); the model id is "s"."""
    clients: list[TestClient] = []

    def make(config: ServerConfig | None = None, **stub: Any) -> Made:
        engine, backend = stub_engine(**stub)
        client = TestClient(create_app(engine, config))
        clients.append(client)
        return client, engine, backend

    yield make
    for client in clients:
        client.close()


@pytest.fixture
def client(make_client: Callable[..., Made]) -> TestClient:
    return make_client()[0]



class ScriptedStream:
    """Stands in for AsyncRequestStream: yields a fixed list of events."""

    def __init__(self, events: list[Any], prompt: tuple[int, ...]) -> None:
        self.events = events
        self.request = SimpleNamespace(prompt=prompt)
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True

    def __aiter__(self) -> AsyncIterator[Any]:
        return self._events()

    async def _events(self) -> AsyncIterator[Any]:
        for event in self.events:
            yield event


@dataclass
class Scripted:
    """A client whose engine answers every generation with ``events``; ``calls`` records each request."""

    client: TestClient
    engine: kvllama.Engine
    events: list[Any]
    calls: list[GenerationRequest] = field(default_factory=list)

    def prompt_text(self) -> str:
        """The last request's prompt as the engine would queue it (a chat rendered), as text."""
        resolved = self.engine.resolve_request("s", self.calls[-1])
        return self.engine.detokenize("s", resolved.prompt)  # type: ignore[arg-type]


@pytest.fixture
def scripted(make_client: Callable[..., Made]) -> Callable[..., Scripted]:
    """scripted(events, config=None) -> Scripted; the stub engine's asubmit replays ``events``."""

    def make(events: list[Any], config: ServerConfig | None = None) -> Scripted:
        client, engine, _ = make_client(config)
        made = Scripted(client, engine, list(events))

        async def asubmit(model_id: str, request: GenerationRequest) -> ScriptedStream:
            made.calls.append(request)
            return ScriptedStream(made.events, tuple(range(10)))

        engine.asubmit = asubmit  # type: ignore[method-assign]
        return made

    return make
