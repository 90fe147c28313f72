"""``kvllama serve --replicas N``: a local Ray cluster, started for the user, running the Serve app.

No ``ray start`` is needed: :func:`start` starts Ray in this process (or
joins the cluster ``RAY_ADDRESS`` names), starts Serve's HTTP proxy on the
requested host and port, and deploys :func:`~kvllama.ray.deployment.build_app`.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from typing import Any

import ray
from ray import serve

from kvllama.api.engine_spec import EngineSpec
from kvllama.ray.deployment import build_app
from kvllama.server.config import ServerConfig

APP_NAME = "kvllama"


def start(
    spec: EngineSpec,
    config: ServerConfig,
    *,
    replicas: int,
    host: str = "127.0.0.1",
    port: int = 8000,
    router: str = "affinity",
    router_options: dict[str, Any] | None = None,
    stats_period: float | None = None,
) -> str:
    """Deploy and return the base URL once every replica has loaded its model."""
    if not ray.is_initialized():
        ray.init(
            address=os.environ.get("RAY_ADDRESS"), include_dashboard=False, log_to_driver=False,
            logging_level=logging.WARNING, configure_logging=False,
        )
    serve.start(http_options={"host": host, "port": port}, logging_config={"log_level": "WARNING"})
    extra = {} if stats_period is None else {"stats_period": stats_period}
    app = build_app(spec, config, replicas=replicas, router=router, router_options=router_options, **extra)
    serve.run(app, name=APP_NAME, route_prefix="/", blocking=False)
    shown = "127.0.0.1" if host in ("", "0.0.0.0") else host
    return f"http://{shown}:{port}"


def stop() -> None:
    """Remove the app and stop Serve and Ray (if this process started them)."""
    try:
        serve.shutdown()
    finally:
        ray.shutdown()


def run_forever(start_app: Callable[[], str], on_listening: Callable[[str], None]) -> None:
    """Start, announce, and serve until Ctrl-C."""
    url = start_app()
    on_listening(url)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        stop()
