"""A prompt's media in the decode loop: each span is one forward pass of its embeddings.

The planner (scheduler.py) sees a prompt with media as text up to its next
span: text chunks stop there. When a request's computed prefix reaches a
span, the span runs here, before the tick's plan, as a pass of its own
(an image's rows may attend both ways, which llama.cpp sets per context, so
nothing else may share the pass). The embeddings are encoded only now, so a
span that a warm start covered is never encoded. A whole short text segment
next to media counts as canonical like a long chunk (kvllama.media.layout).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import replace

from kvllama.backend.protocol import Backend
from kvllama.decoding.finishing import Finisher
from kvllama.decoding.loop_state import LoopState
from kvllama.decoding.request import Request, prompt_resume_point
from kvllama.decoding.scheduler import Tick
from kvllama.errors import DecodeError, KvllamaError
from kvllama.media.layout import MediaSpan

log = logging.getLogger("kvllama.decoding")


class MediaSteps:
    def __init__(self, state: LoopState, finisher: Finisher, sample: Callable[[Request, int], None]) -> None:
        self.state = state
        self.finisher = finisher
        self._sample = sample

    def run(self, adapters: tuple[tuple[str, float], ...]) -> None:
        """Every running request of this tick's adapter set that stands at a span computes it."""
        stepped = False
        for r in list(self.state.running):
            layout = r.spec.layout
            if (layout is None or r.done or r.cancel_requested or r.pending_token is not None
                    or r.options.adapters != adapters or r.n_computed >= len(r.prompt)):
                continue
            span = layout.span_starting(r.n_computed)
            if span is not None:
                self._step(r, span, adapters)
                stepped = True
        if stepped:
            self.state.running = [r for r in self.state.running if not r.done]

    def _step(self, r: Request, span: MediaSpan, adapters: tuple[tuple[str, float], ...]) -> None:
        backend = self.state.backend
        media = backend.media
        assert media is not None and r.seq_id is not None
        last = span.end == len(r.prompt)
        started = time.perf_counter()
        self.state.prefilling_now = frozenset((r,))
        try:
            rows = media.embeddings(span)
            row = backend.decode_media(r.seq_id, span.start, rows, media.non_causal(span), last, adapters)
        except KvllamaError as exc:
            backend.clear_sequence(r.seq_id, span.start)
            if isinstance(exc, DecodeError) and exc.status < -1:
                raise  # llama.cpp's "fatal error": the loop rebuilds the context
            self.finisher.fail(r, exc)
            return
        finally:
            self.state.prefilling_now = frozenset()
        r.timing.prefill_seconds += time.perf_counter() - started
        if r.exact_len >= span.start:
            r.exact_len = span.end
        r.n_computed = span.end
        if self.state.warm is not None:
            self.state.warm.after_prefill_step(r)
        if last:
            try:
                self._sample(r, row)
            except Exception as exc:
                if not isinstance(exc, KvllamaError):
                    log.exception("sampling request %s failed", r.id)
                self.finisher.fail(r, exc)


def prompt_end(r: Request) -> int:
    """What the planner may prefill up to now: the prompt's end, or the next span's start."""
    layout = r.spec.layout
    if layout is None or r.pending_token is not None:
        return len(r.prompt)
    return layout.segment_end(r.n_computed)


def sample_only_at_prompt_end(tick: Tick, running: list[Request]) -> Tick:
    """A chunk that ends where a span starts samples nothing: the prompt goes on after it."""
    slices = tuple(
        replace(s, sample=False) if s.sample and not s.decoding and running[s.key].spec.layout is not None
        and s.start + s.count < len(running[s.key].prompt) else s
        for s in tick.slices)
    return Tick(slices)


def canonical_chunk(r: Request, start: int, count: int, min_rows: int) -> bool:
    """Rows computed as every run of this prompt computes them: a chunk of ``min_rows``+ rows,
    or a whole short text segment beside media (always computed alone, in one chunk)."""
    layout = r.spec.layout
    return count >= min_rows or (layout is not None and layout.is_short(start, start + count))


def fit_warm_start(r: Request, backend: Backend) -> None:
    """Cut a warm start back to the longest prefix the prompt's layout resumes from exactly.

    Whatever gave the prefix (a session, a kept or live sequence, a cache row) agrees with
    the prompt on every shared id, and so on how those positions were computed; the layout
    adds where the rest may start (never inside a medium or a short segment), and above a
    sliding window the resume grid applies as to every restore.
    """
    layout = r.spec.layout
    if layout is None or r.n_computed <= 0 or r.seq_id is None:
        return
    point = prompt_resume_point(layout, r.n_computed, backend.shape.swa_window)
    if point == r.n_computed:
        return
    if point == 0 or not backend.truncate_sequence(r.seq_id, point):
        backend.clear_sequence(r.seq_id)
        point = 0
    r.n_computed = r.exact_len = r.cache.read = point
    r.cache.restored_key = None  # what the sequence holds is no longer the row it restored
    if point == 0:
        r.cache.hit_kind, r.cache.source = "cold", "none"
    elif r.cache.hit_kind == "exact":
        r.cache.hit_kind = "partial"
