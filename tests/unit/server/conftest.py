"""Stub-engine fixtures for the HTTP server: a TestClient, and helpers to read SSE."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from starlette.testclient import TestClient

import kvllama
from kvllama.backend.stub import StubBackend
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

