"""The request routers living in this process, for the ingress's /metrics and /status.

Its own module because Ray Serve pickles the router's module by value
(kvllama/ray/router.py): a registry defined there would be copied.
"""

from __future__ import annotations

import threading
from typing import Any


class RouterRegistry:
    """The routers living in this process (normally one: the ingress's handle to the replicas)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._routers: list[Any] = []

    def add(self, router: Any) -> None:
        with self._lock:
            self._routers.append(router)

    def all(self) -> list[Any]:
        with self._lock:
            return list(self._routers)


ROUTERS = RouterRegistry()
