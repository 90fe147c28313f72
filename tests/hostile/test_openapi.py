"""Schemathesis over the server's OpenAPI document, against the real ``kvllama serve`` process.

The routes read raw JSON (schemas_common.read_json); the server publishes
each route's pydantic model as its ``requestBody`` (server/openapi.py), so
schemathesis generates bodies from the same schemas the routes validate with.

The document is built in-process from ``create_app`` over a stub engine
(schemathesis's lazy ``from_fixture`` loader does not run under pytest 9),
and :func:`test_published_document_matches` checks that the live server
publishes the same paths.

Checks per case: not a server error (5xx), a JSON body (or an event stream),
and the server process alive and healthy; the reference request is compared
every ``REFERENCE_EVERY`` cases and at the end of each operation.
"""

from __future__ import annotations

import os
from typing import Any

import httpx
import pytest
import schemathesis
from hostile_support import MAX_TOKENS_LIMIT, Hostile, answer_problem
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error

import kvllama
from kvllama.backend.stub import StubBackend, StubConfig
from kvllama.server import ServerConfig, create_app
from kvllama.server.openapi import REQUEST_MODELS

# Fuzzing-phase examples per operation (the coverage phase adds its own boundary cases).
MAX_EXAMPLES = int(os.environ.get("KVLLAMA_HOSTILE_OPENAPI_EXAMPLES", "10"))
REFERENCE_EVERY = 25


def published_document() -> dict[str, Any]:
    """The OpenAPI document ``kvllama serve`` publishes (same routes; the engine does not matter)."""
    engine = kvllama.Engine(cache=None, backend_factory=lambda _path, _opts: StubBackend(StubConfig()))
    try:
        engine.load_model("s")
        return create_app(engine, ServerConfig()).openapi()
    finally:
        engine.close()


DOCUMENT = published_document()
schema = schemathesis.openapi.from_dict(DOCUMENT)
schema.config.update(request_timeout=30)
schema.config.generation.update(max_examples=MAX_EXAMPLES, database="none", deterministic=True)

_cases_seen = {"n": 0}


def test_published_document_matches(hostile: Hostile) -> None:
    live = httpx.get(f"{hostile.url}/openapi.json", timeout=30).json()
    assert set(live["paths"]) == set(DOCUMENT["paths"])
    hostile.assert_survived()


def test_every_post_route_publishes_its_request_body() -> None:
    for path, model in REQUEST_MODELS.items():
        body = DOCUMENT["paths"][path]["post"]["requestBody"]
        ref = body["content"]["application/json"]["schema"]["$ref"]
        assert ref == f"#/components/schemas/{model.__name__}"
        assert DOCUMENT["components"]["schemas"][model.__name__]["properties"]


@schema.parametrize()
@settings(deadline=None, suppress_health_check=list(HealthCheck), print_blob=True)
def test_openapi_operation(case: Any, hostile: Hostile) -> None:
    server_process = hostile.server
    pid = hostile.pid
    _bound_generation(case)
    response = case.call_and_validate(base_url=hostile.url, checks=[not_a_server_error])
    if not response.stream_cut_short and case.operation.path != "/metrics":  # Prometheus text
        problem = answer_problem(_as_httpx(response), None, response.elapsed, 30.0)
        assert problem is None, problem
    _cases_seen["n"] += 1
    if not server_process.alive() or server_process.pid != pid or not server_process.healthy():
        pytest.fail(f"{case.operation.label}: the server did not survive: {server_process.problem(pid)}")
    if _cases_seen["n"] % REFERENCE_EVERY == 0:
        problem = server_process.problem(pid)
        assert problem is None, problem
    server_process.verified = True


def test_openapi_after(hostile: Hostile) -> None:
    """After all the schemathesis cases: same process, healthy, same reference answer."""
    hostile.assert_survived()


def _bound_generation(case: Any) -> None:
    """Cap what a Responses case generates at 16 tokens.

    Any string is a valid ``input``, so nearly every generated body is answered, each with up to
    the server's 128 tokens (and a JSON-schema body samples through a grammar): the operation
    alone took 398 s. The cap changes how long an answer is, never the body's shape or a
    refusal (a count above the server's limit stays as generated: it must be a 400).
    """
    body = case.body
    if case.operation.path != "/v1/responses" or not isinstance(body, dict):
        return
    n = body.get("max_output_tokens")
    if n is None or (type(n) is int and 16 < n <= MAX_TOKENS_LIMIT):
        body["max_output_tokens"] = 16


def _as_httpx(response: Any) -> httpx.Response:
    """schemathesis's Response as an httpx.Response, for :func:`answer_problem`."""
    request = httpx.Request(response.request.method or "POST", response.request.url or "http://x/")
    return httpx.Response(response.status_code, headers=dict(_headers(response)), content=response.content,
                          request=request)


def _headers(response: Any) -> list[tuple[str, str]]:
    items: list[tuple[str, str]] = []
    for name, values in response.headers.items():
        for value in values if isinstance(values, list) else [values]:
            items.append((name, value))
    return items
