"""Turning sampled token bytes into safe-to-stream text.

Two small pieces that run once per generated token on the decode thread:

* :class:`Utf8Assembler` joins token pieces into text and holds back a
  multi-byte character until all its bytes have arrived, so a character split
  over two tokens is never streamed broken.
* :class:`StopMatcher` holds back any tail of the text that could still become
  a stop sequence, so no part of a stop sequence ever reaches the stream, even
  when it spans several tokens.
"""

from __future__ import annotations

import codecs
from dataclasses import dataclass


class Utf8Assembler:
    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, piece: bytes) -> str:
        return self._decoder.decode(piece)

    def flush(self) -> str:
        """Bytes left at the end can never complete: emit them as U+FFFD."""
        return self._decoder.decode(b"", final=True)


@dataclass(frozen=True, slots=True)
class StopResult:
    # Text that is safe to emit now.
    text: str
    # The stop sequence that matched, if one did (generation must end).
    matched: str | None = None


class StopMatcher:
    """Finds the first occurrence of any stop sequence in the streamed text."""

    def __init__(self, stops: tuple[str, ...]) -> None:
        self._stops = tuple(s for s in stops if s)
        self._held = ""

    def push(self, text: str) -> StopResult:
        if not self._stops:
            return StopResult(text)
        window = self._held + text
        first: tuple[int, str] | None = None
        for stop in self._stops:
            at = window.find(stop)
            if at >= 0 and (first is None or at < first[0]):
                first = (at, stop)
        if first is not None:
            self._held = ""
            return StopResult(window[: first[0]], first[1])
        keep = self._longest_partial_suffix(window)
        self._held = window[len(window) - keep :] if keep else ""
        return StopResult(window[: len(window) - keep])

    def flush(self) -> str:
        """At the end of generation the held tail did not become a stop: release it."""
        held, self._held = self._held, ""
        return held

    def _longest_partial_suffix(self, window: str) -> int:
        """Length of the longest suffix of ``window`` that is a proper prefix of a stop."""
        best = 0
        for stop in self._stops:
            for n in range(min(len(stop) - 1, len(window)), best, -1):
                if window.endswith(stop[:n]):
                    best = n
                    break
        return best
