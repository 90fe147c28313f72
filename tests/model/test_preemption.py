"""Exact preemption on the real model: a request parked mid-generation for one of higher priority
resumes from its own state blob and finishes with the tokens of an uninterrupted run."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

import kvllama
from kvllama.events import TokenEvent
from kvllama.results import ResultBuilder

M = "prio"
PROMPT = "Write a short story about a lighthouse keeper who finds a message in a bottle. Once upon a time"


@pytest.fixture(scope="module")
def engine() -> Iterator[kvllama.Engine]:
    with kvllama.Engine() as eng:
        eng.load_model(M, n_seq_max=1, n_ctx=2048, n_threads=2)
        yield eng


@pytest.mark.parametrize("sampling", [{"temperature": 0.0}, {"temperature": 0.9, "seed": 3}],
                         ids=["greedy", "seeded"])
def test_a_parked_request_finishes_with_the_tokens_of_an_uninterrupted_run(engine, sampling):
    alone = engine.complete(M, PROMPT, max_tokens=48, priority=5, **sampling)
    low = engine.infer(M, PROMPT, max_tokens=48, priority=5, **sampling)
    builder, seen, events = ResultBuilder(), 0, iter(low)
    while seen < 12:  # mid-generation
        event = next(events)
        builder.add(event)
        seen += isinstance(event, TokenEvent)
    gate = threading.Event()
    engine.models.get(M).loop.call(gate.wait)  # the urgent request arrives between two ticks
    urgent = engine.infer(M, "Quick: what is two plus two?", max_tokens=6, priority=0, temperature=0)
    gate.set()
    answered = urgent.result()
    for event in events:
        builder.add(event)
    resumed = builder.result()
    assert resumed.stats.preemptions == 1 and resumed.stats.preempted_seconds > 0
    assert len(answered.generated_tokens) == 6
    assert resumed.generated_tokens == alone.generated_tokens
