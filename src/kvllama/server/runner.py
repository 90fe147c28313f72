"""Running the app under uvicorn: in the foreground (``kvllama serve``) or on a thread.

``serve(..., on_listening=...)`` calls back with the server's URL once its
socket is bound (``kvllama serve`` prints :func:`listening_banner` then).

``ws="none"``: the server has no websocket routes, and skipping the
websocket protocol import keeps a deprecation warning of the ``websockets``
package (when installed) out of strict test runs. ``http="h11"``,
``loop="asyncio"``: uvicorn otherwise picks httptools and uvloop whenever
they are installed (``ray[serve]`` installs both), and httptools answers some
malformed requests itself with a plain-text 400 instead of our JSON error; the
server behaves the same whatever else is installed. ``lifespan="off"``: the
caller owns the engine, so there is nothing to start or stop with the app.
"""

from __future__ import annotations

import contextlib
import json
import shlex
import socket
import sys
import threading
import time
from collections.abc import Callable, Mapping
from types import TracebackType

import uvicorn
from fastapi import FastAPI

from kvllama.api.engine import Engine
from kvllama.server.app import create_app
from kvllama.server.config import ServerConfig

# uvicorn.run's exit status when the server could not start (the port is taken, say).
STARTUP_FAILURE = 3


def serve(
    engine: Engine,
    config: ServerConfig | None = None,
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    log_level: str = "info",
    on_listening: Callable[[str], None] | None = None,
) -> None:
    """Serve ``engine`` until interrupted (Ctrl-C). Binds to loopback unless told otherwise.

    ``on_listening(url)`` runs once the socket is bound (``url`` names the real port).
    """
    app = create_app(engine, config)
    server = _AnnouncingServer(
        uvicorn.Config(app, host=host, port=port, log_level=log_level, ws="none", lifespan="off",
                       http="h11", loop="asyncio",
                       timeout_graceful_shutdown=5),
        on_listening,
    )
    with contextlib.suppress(KeyboardInterrupt):  # as uvicorn.run: Ctrl-C is a normal stop
        server.run()
    if not server.started:
        sys.exit(STARTUP_FAILURE)


class _AnnouncingServer(uvicorn.Server):
    """A uvicorn server that reports its URL once it listens."""

    def __init__(self, config: uvicorn.Config, on_listening: Callable[[str], None] | None) -> None:
        super().__init__(config)
        self._on_listening = on_listening

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started and self._on_listening is not None:
            bound = [s.getsockname() for srv in self.servers for s in srv.sockets or ()]
            port = bound[0][1] if bound else self.config.port
            self._on_listening(client_url(self.config.host, port))


def client_url(host: str, port: int) -> str:
    """The URL a client on this machine uses (a wildcard bind is reached over loopback)."""
    if host in ("", "0.0.0.0"):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def listening_banner(url: str, models: Mapping[str, str], *, api_key: bool, bind: str | None = None,
                     try_model: str | None = None) -> str:
    """What ``kvllama serve`` prints once it listens: where, which models, a curl to try.

    ``models``: served name -> a description (a path, say); the curl asks ``try_model`` (a chat
    model, if one is served), else the first. The key itself is never printed.
    """
    name = try_model if try_model in models else next(iter(models), "default")
    body = json.dumps({"model": name, "max_tokens": 32,
                       "messages": [{"role": "user", "content": "What is the capital of France?"}]})
    auth = ' -H "Authorization: Bearer $KVLLAMA_API_KEY"' if api_key else ""
    where = f"{url}" + (f" (bound to {bind})" if bind and bind not in url else "")
    lines = [f"kvllama is listening on {where}"]
    lines += [f"  model {n!r}: {d}" for n, d in models.items()]
    lines.append(f"  status page: {url}/" + ("#key=<API key>" if api_key else ""))
    lines.append(f"  try: curl {url}/v1/chat/completions{auth} -H \"Content-Type: application/json\" "
                 f"-d {shlex.quote(body)}")
    if api_key:
        lines.append("  (every route but / and /health needs the API key; the curl reads $KVLLAMA_API_KEY)")
    return "\n".join(lines)


class ServerThread:
    """An app served by uvicorn on a background thread; ``with ServerThread(app) as url: ...``.

    Port 0 picks a free port; the socket is bound here, before uvicorn
    starts, so the port cannot be taken in between.
    """

    def __init__(self, app: FastAPI, host: str = "127.0.0.1", port: int = 0,
                 log_level: str = "warning") -> None:
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((host, port))
        self.host, self.port = self._sock.getsockname()[:2]
        config = uvicorn.Config(app, log_level=log_level, ws="none", lifespan="off", http="h11",
                                loop="asyncio", timeout_graceful_shutdown=2)
        self.server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self._sock]},
                                        name="kvllama-http", daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 30.0) -> str:
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the HTTP server did not start; see the uvicorn log")
            time.sleep(0.01)
        return self.url

    def stop(self, timeout: float = 10.0) -> None:
        self.server.should_exit = True
        if self._thread.is_alive():
            self._thread.join(timeout)
        self._sock.close()

    def __enter__(self) -> str:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
