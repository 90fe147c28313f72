"""Priorities: the waiting queue's order, and exact preemption of lower-priority requests.

The queue is ordered by ``RequestOptions.priority`` (vLLM's meaning: lower runs
sooner), first come first served within a priority. When the request at the
head of the queue finds every slot taken by running requests, the running
request of the lowest priority below its own is *parked*: its sequence's state
(KV cells, its reply's decode rows included) is read out as a blob and its slot
given up; the request keeps everything else (sampler and its RNG, grammar
state, the token it sampled last, its channels) and goes back to the queue,
ahead of its equals. When a slot frees, the blob is restored and it goes on.

Nothing is recomputed, so it produces exactly the tokens an uninterrupted run
would, as long as the restored cells land where they were: a sequence's cells
start at the beginning of its own stream either way, and a blob holds every
cell while the sequence is no longer than the sliding window (beyond it, a
state blob keeps only the window, at other cell indices: docs/measured/exactness.md).
So a request past the window is never parked; it runs to its end.
"""

from __future__ import annotations

import time
from collections import deque

from kvllama.backend.protocol import Backend
from kvllama.decoding.request import ParkedState, Request, Status


def enqueue(waiting: deque[Request], r: Request, *, ahead_of_equals: bool = False) -> None:
    """Insert ``r`` by priority: after its equals (a new request), or before them (a parked one)."""
    p = r.options.priority
    for i, q in enumerate(waiting):
        if q.options.priority > p or (ahead_of_equals and q.options.priority == p):
            waiting.insert(i, r)
            return
    waiting.append(r)


def victim(running: list[Request], head: Request, backend: Backend) -> Request | None:
    """The running request to park for ``head``: the lowest priority below head's, the latest admitted
    among equals; only one whose whole state a blob holds (see the module docstring)."""
    window = backend.shape.swa_window
    candidates = [r for r in running
                  if r.options.priority > head.options.priority and r.seq_id is not None
                  and not r.cancel_requested and not r.done and (not window or r.n_computed <= window)]
    return max(candidates, key=lambda r: (r.options.priority, r.timing.admitted_at or 0.0), default=None)


def park(r: Request, backend: Backend, running: list[Request], waiting: deque[Request]) -> None:
    """Read the sequence out, give the slot up, and queue the request again ahead of its equals."""
    assert r.seq_id is not None
    blob = backend.sequence_state(r.seq_id)
    backend.clear_sequence(r.seq_id)
    r.parked = ParkedState(blob, time.perf_counter())
    r.timing.preemptions += 1
    r.seq_id = None
    r.status = Status.WAITING
    running.remove(r)
    enqueue(waiting, r, ahead_of_equals=True)


def unpark(r: Request, seq_id: int, backend: Backend) -> bool:
    """Restore a parked request into ``seq_id``; False if llama.cpp refused the blob."""
    parked = r.parked
    assert parked is not None
    r.parked = None
    backend.clear_sequence(seq_id)
    if not backend.restore_sequence(seq_id, parked.blob):
        backend.clear_sequence(seq_id)
        return False
    r.seq_id = seq_id
    r.timing.preempted_seconds += time.perf_counter() - parked.since
    r.status = Status.DECODING if r.pending_token is not None else Status.PREFILLING
    return True
