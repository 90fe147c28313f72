"""Running the app under uvicorn: in the foreground (``kvllama serve``) or on a thread.

``ws="none"``: the server has no websocket routes, and skipping the
websocket protocol import keeps a deprecation warning of the ``websockets``
package (when installed) out of strict test runs. ``lifespan="off"``: the
caller owns the engine, so there is nothing to start or stop with the app.
"""

from __future__ import annotations

import socket
import threading
import time
from types import TracebackType

import uvicorn
from fastapi import FastAPI

from kvllama.api.engine import Engine
from kvllama.server.app import create_app
from kvllama.server.config import ServerConfig


def serve(
    engine: Engine,
    config: ServerConfig | None = None,
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    log_level: str = "info",
) -> None:
    """Serve ``engine`` until interrupted (Ctrl-C). Binds to loopback unless told otherwise."""
    app = create_app(engine, config)
    uvicorn.run(app, host=host, port=port, log_level=log_level, ws="none", lifespan="off",
                timeout_graceful_shutdown=5)


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
        config = uvicorn.Config(app, log_level=log_level, ws="none", lifespan="off",
                                timeout_graceful_shutdown=2)
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
