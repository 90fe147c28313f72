"""Where a prompt's media sit, and which of its positions a warm start may resume at.

A prompt with media is a run of text segments and media spans. A media span
is computed in one forward pass from the projector's embeddings (image
attention may be non-causal, so its rows depend on each other and it is never
split). The text between media is computed in prompt chunks as usual, but a
chunk never crosses into a span, so a text segment shorter than the loop's
canonical chunk (``min_rows``, 8) is computed as one short chunk, which
llama.cpp computes in another kernel class than the same tokens inside a long
chunk (docs/measured/exactness.md).

Two things keep every warm start of such a prompt equal to its cold run:

* **Ids that say how a position was computed.** A span's positions get
  placeholder ids derived from the medium's digest and the position in it
  (:func:`placeholders`), so the cache's block chain and every token-exact
  comparison see the medium. A short segment's text tokens get tagged ids
  (``~token``, negative), so they never equal the same text computed inside
  a long chunk: wherever two prompts' ids agree, their positions were
  computed the same way, and a row, a kept sequence or a live copy can only
  give a prompt what it would have computed itself.
* **Resume points that leave the rest computed as a cold run computes it**
  (:meth:`PromptLayout.resume_point`): never inside a span, never inside a
  short segment (only at its start), and inside a long segment only where at
  least ``min_rows`` of it remain (or at its very end, before a span).

The ids are for keys and comparisons only: :func:`vocab_id` gives a tagged
token's vocabulary id back when its row is decoded, and placeholders are
never decoded as tokens.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass, field
from hashlib import blake2b

# Placeholder ids lie below -PLACEHOLDER_BASE; tagged text ids in [-PLACEHOLDER_BASE, -1].
PLACEHOLDER_BASE = 1 << 24
_PLACEHOLDER_SPAN = 1 << 30


def vocab_id(token: int) -> int:
    """The vocabulary id of a prompt id (a tagged text token is stored as ``~token``)."""
    return token if token >= 0 else ~token


def is_placeholder(token: int) -> bool:
    return token < -PLACEHOLDER_BASE


def placeholders(digest: bytes, n: int) -> tuple[int, ...]:
    """The ids of a medium's ``n`` positions: each a 30-bit hash of the digest and the position.

    Per position rather than one id for all: two different media then agree on
    a whole span only if 30 bits agree at every position, and a span cut by a
    block boundary still carries the medium in every block it touches.
    """
    out = []
    for i in range(n):
        h = int.from_bytes(blake2b(digest + i.to_bytes(4, "little"), digest_size=4).digest(), "little")
        out.append(-PLACEHOLDER_BASE - 1 - (h % _PLACEHOLDER_SPAN))
    return tuple(out)


@dataclass(frozen=True, eq=False)
class MediaSpan:
    """One medium's positions in a prompt; ``chunk`` is what the projector encodes (not compared)."""

    start: int
    n_tokens: int
    digest: bytes
    kind: str  # "image" or "audio"
    chunk: object = field(default=None, repr=False)

    @property
    def end(self) -> int:
        return self.start + self.n_tokens


@dataclass(frozen=True, eq=False)
class PromptLayout:
    """A prompt's media spans (in order) and its length; pure, so it is unit-tested without a model."""

    spans: tuple[MediaSpan, ...]
    n_prompt: int
    min_rows: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "_starts", [s.start for s in self.spans])
        object.__setattr__(self, "_ends", [s.end for s in self.spans])

    def span_starting(self, pos: int) -> MediaSpan | None:
        i = bisect.bisect_left(self._starts, pos)  # type: ignore[attr-defined]
        return self.spans[i] if i < len(self.spans) and self.spans[i].start == pos else None

    def segment(self, pos: int) -> tuple[int, int]:
        """The text segment that ``pos`` (not inside a span) starts, continues or ends: (start, end)."""
        i = bisect.bisect_right(self._ends, pos)  # type: ignore[attr-defined]
        start = self.spans[i - 1].end if i > 0 else 0
        end = self.spans[i].start if i < len(self.spans) else self.n_prompt
        return start, end

    def segment_end(self, pos: int) -> int:
        """Where the text from ``pos`` on must stop: the next span's start, else the prompt's end."""
        return self.segment(pos)[1]

    def span_around(self, pos: int) -> MediaSpan | None:
        """The span that ``pos`` lies strictly inside, if any."""
        i = bisect.bisect_right(self._starts, pos)  # type: ignore[attr-defined]
        if i > 0 and self.spans[i - 1].start < pos < self.spans[i - 1].end:
            return self.spans[i - 1]
        return None

    def is_short(self, start: int, end: int) -> bool:
        """Whether [start, end) is a whole text segment shorter than a canonical chunk."""
        return self.segment(start) == (start, end) and 0 < end - start < self.min_rows

    def resume_point(self, p: int) -> int:
        """The longest prefix of at most ``p`` tokens after which the rest is computed as cold.

        Only the prompt's own layout matters here: the tagged and placeholder
        ids already make a source agree with it on how every shared position
        was computed (see the module docstring).
        """
        p = max(0, min(p, self.n_prompt))
        span = self.span_around(p)
        if span is not None:
            p = span.start
        start, end = self.segment(p)
        if p == start:
            return p
        if end - start < self.min_rows:
            return start  # inside (or at the end of) a short segment: from its start
        if p == end and end < self.n_prompt:
            return p  # a long segment computed whole, right before a span
        return min(p, end - self.min_rows)


def tag_short_segments(tokens: Sequence[int], spans: Sequence[MediaSpan], min_rows: int) -> tuple[int, ...]:
    """``tokens`` (placeholders in the spans) with every short text segment's ids tagged."""
    if not spans:
        return tuple(tokens)
    out = list(tokens)
    bounds = [0]
    for s in spans:
        bounds.extend((s.start, s.end))
    bounds.append(len(out))
    for a, b in zip(bounds[::2], bounds[1::2], strict=True):
        if 0 < b - a < min_rows:
            out[a:b] = [~t if t >= 0 else t for t in out[a:b]]
    return tuple(out)
