"""The optional memory-pressure watcher: sheds RAM and shm rows when the machine runs low.

Above ``high`` (fraction of MemTotal in use, from /proc/meminfo MemAvailable)
it asks the cache to free enough bytes to get back to ``low``; the cache
demotes its lowest-score RAM and shm rows to disk (or drops them). The
reading function is injectable so tests need no real memory pressure. GPU
memory is not watched (kvllama runs llama.cpp on CPU here).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

log = logging.getLogger("kvllama.kvcache")

MemoryReader = Callable[[], tuple[int, int]]  # () -> (available bytes, total bytes)


def read_meminfo(path: str = "/proc/meminfo") -> tuple[int, int]:
    fields: dict[str, int] = {}
    with open(path, encoding="ascii") as f:
        for line in f:
            name, _, rest = line.partition(":")
            if name in ("MemAvailable", "MemTotal"):
                fields[name] = int(rest.split()[0]) * 1024
    return fields["MemAvailable"], fields["MemTotal"]


class MemoryWatcher:
    def __init__(
        self,
        shed: Callable[[int], int],
        *,
        high: float,
        low: float,
        interval: float,
        read: MemoryReader = read_meminfo,
    ) -> None:
        self._shed = shed
        self._high, self._low, self._interval = high, low, interval
        self._read = read
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def check_once(self) -> int:
        """Shed if above the high-water mark; return the bytes freed."""
        available, total = self._read()
        if total <= 0:
            return 0
        used = 1.0 - available / total
        if used <= self._high:
            return 0
        freed = self._shed(round((used - self._low) * total))
        log.info("memory %.0f%% used: shed %d bytes of cached rows", used * 100, freed)
        return freed

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="kvcache-pressure", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self.check_once()
            except Exception:  # never let a bad reading kill the watcher
                log.exception("memory-pressure check failed")

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
