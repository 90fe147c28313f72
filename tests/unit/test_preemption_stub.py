"""Priorities on the stub backend: the queue's order, and a parked request that resumes exactly."""

from __future__ import annotations

import threading

import pytest

from kvllama.errors import InvalidRequestError
from kvllama.events import TokenEvent
from kvllama.results import ResultBuilder


def hold(engine) -> threading.Event:
    """Block the model's loop until the returned event is set, so submissions arrive together."""
    gate = threading.Event()
    engine.models.get("s").loop.call(gate.wait)
    return gate


def test_waiting_requests_run_by_priority_then_arrival(stub_engine):
    engine, backend = stub_engine(n_seq_max=1, decode_delay=0.001)
    gate = hold(engine)
    order = [("A", 5), ("B", 0), ("C", 5), ("D", -1), ("E", 0)]
    streams = {m: engine.infer("s", m * 4, max_tokens=2, temperature=0, priority=p) for m, p in order}
    gate.set()
    for s in streams.values():
        s.result()
    first = {m: next(i for i, rows in enumerate(backend.decode_log) if any(t == ord(m) for t, *_ in rows))
             for m, _ in order}
    assert sorted(first, key=first.__getitem__) == ["D", "B", "E", "A", "C"]


def test_a_request_of_higher_priority_parks_a_running_one_which_resumes_exactly(stub_engine):
    engine, backend = stub_engine(n_seq_max=1, decode_delay=0.001)
    alone = engine.complete("s", "low priority work", max_tokens=40, temperature=0, priority=5)
    low = engine.infer("s", "low priority work", max_tokens=40, temperature=0, priority=5)
    builder, seen = ResultBuilder(), 0
    events = iter(low)
    while seen < 5:  # the low request is decoding
        event = next(events)
        builder.add(event)
        seen += isinstance(event, TokenEvent)
    gate = hold(engine)
    high = engine.infer("s", "urgent", max_tokens=4, temperature=0, priority=0)
    gate.set()
    urgent = high.result()
    for event in events:
        builder.add(event)
    rest = builder.result()
    assert rest.generated_tokens == alone.generated_tokens  # as if never interrupted
    assert rest.stats.preemptions == 1 and rest.stats.preempted_seconds > 0
    assert urgent.stats.preemptions == 0 and len(urgent.generated_tokens) == 4
    assert backend.restores >= 1


def test_equal_priorities_never_preempt_and_priorities_are_checked(stub_engine):
    engine, _ = stub_engine(n_seq_max=1, decode_delay=0.001)
    first = engine.infer("s", "one", max_tokens=20, temperature=0)
    next(iter(first))
    second = engine.complete("s", "two", max_tokens=2, temperature=0)
    assert first.result().stats.preemptions == 0 and second.stats.queue_seconds > 0
    for bad in ("high", 1.5, True, 2**40):
        with pytest.raises(InvalidRequestError, match="priority"):
            engine.complete("s", "x", max_tokens=1, priority=bad)


def test_a_trusted_proxy_header_sets_the_priority_over_the_body():
    from kvllama.server import ServerConfig
    from kvllama.server.edge import Edge
    from kvllama.server.errors import ApiError

    config = ServerConfig(priority_header="x-priority")
    assert Edge(config, priority_header="-3").priority(7) == -3
    assert Edge(config).priority(7) == 7 and Edge(ServerConfig()).priority(None) is None
    with pytest.raises(ApiError) as bad:
        Edge(config, priority_header="urgent").priority(0)
    assert bad.value.status == 400 and bad.value.param == "priority"
