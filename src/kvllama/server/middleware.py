"""Pure ASGI middleware: request metrics and the last-resort 500, auth, body-size limit.

Pure ASGI rather than Starlette's BaseHTTPMiddleware so streamed responses
pass through untouched and a client disconnect still reaches the route
(BaseHTTPMiddleware would put its own task and queue in between).
"""

from __future__ import annotations

import secrets
from typing import Any

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from kvllama.server.errors import ApiError, error_response, family_of
from kvllama.server.metrics import ServerMetrics

# "/" is the status page: only HTML and script, no data; its script sends the key to /status.
PUBLIC_PATHS = frozenset({"/health", "/"})


class MetricsMiddleware:
    """Counts every request by route template and status, and turns stray exceptions into 500s."""

    def __init__(self, app: ASGIApp, metrics: ServerMetrics, paths: frozenset[str] = frozenset()) -> None:
        self.app = app
        self.metrics = metrics
        # Route paths without parameters: requests refused before routing (401, 413) keep their label.
        self.paths = paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = {"code": 500, "started": False}

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
                status["started"] = True
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        except Exception as exc:  # mapped (and logged) by from_exception
            if not status["started"]:
                await error_response(exc, family_of(scope["path"]))(scope, receive, send_wrapper)
        finally:
            route: Any = scope.get("route")
            label = getattr(route, "path", None)
            if label is None:
                label = scope["path"] if scope["path"] in self.paths else "unmatched"
            self.metrics.requests.labels(label, scope["method"], str(status["code"])).inc()


class GuardMiddleware:
    """API-key check (skipped for PUBLIC_PATHS) and the request-body size limit, before any parsing."""

    def __init__(self, app: ASGIApp, api_key: str | None, max_body_bytes: int) -> None:
        self.app = app
        self.api_key = api_key
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        family = family_of(scope["path"])
        headers = Headers(scope=scope)
        if self.api_key is not None and scope["path"] not in PUBLIC_PATHS and not self._authorized(headers):
            err = ApiError(401, "invalid or missing API key: send 'Authorization: Bearer <key>' "
                                "or 'x-api-key: <key>'")
            await error_response(err, family)(scope, receive, send)
            return
        declared = headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
            await error_response(self._too_large(f"{declared} bytes"), family)(scope, receive, send)
            return
        body = await self._read_body(receive)
        if body is None:
            return  # the client left while sending its body
        if len(body) > self.max_body_bytes:
            await error_response(self._too_large("more than that"), family)(scope, receive, send)
            return
        await self.app(scope, _replay(body, receive), send)

    def _authorized(self, headers: Headers) -> bool:
        assert self.api_key is not None
        expected = self.api_key.encode()
        bearer = headers.get("authorization", "")
        scheme, _, token = bearer.partition(" ")
        candidates = [headers.get("x-api-key", "")]
        if scheme.lower() == "bearer":
            candidates.append(token.strip())
        return any(secrets.compare_digest(c.encode(), expected) for c in candidates if c)

    def _too_large(self, size: str) -> ApiError:
        return ApiError(413, f"request body is {size}; this server accepts at most "
                             f"{self.max_body_bytes} bytes", code="request_too_large")

    async def _read_body(self, receive: Receive) -> bytes | None:
        """The whole body, or as soon as it passes the limit what was read; None on disconnect."""
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            chunks.append(chunk)
            size += len(chunk)
            if size > self.max_body_bytes or not message.get("more_body", False):
                return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    """A receive channel that yields the buffered body once, then the client's own messages."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay
