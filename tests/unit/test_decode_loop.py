"""The decode loop and Engine, driven through the deterministic stub backend."""

import asyncio
import itertools
import threading
import time

import pytest

from kvllama.api.embedding import MAX_EMBED_INPUTS, MAX_EMBED_TOKENS
from kvllama.api.submission import release
from kvllama.backend.stub import EOS
from kvllama.decoding.request import QueueSink
from kvllama.errors import (
    ContextOverflowError,
    GrammarError,
    InvalidRequestError,
    ModelBusyError,
    ModelExistsError,
    UnknownModelError,
)
from kvllama.events import DoneEvent, TextEvent, TokenEvent
from kvllama.request import GenerationRequest


def first_decode_index(backend, marker: int) -> int:
    for i, rows in enumerate(backend.decode_log):
        if any(tok == marker for tok, *_ in rows):
            return i
    raise AssertionError(f"token {marker} never decoded")


def test_requests_beyond_capacity_queue_fifo_and_all_complete(stub_engine):
    engine, backend = stub_engine(n_seq_max=2, decode_delay=0.002)
    markers = [ord(c) for c in "ABCDE"]
    streams = [engine.infer("s", chr(m) * 3, max_tokens=6, temperature=0) for m in markers]
    results = [s.result() for s in streams]
    assert all(len(r.generated_tokens) == 6 for r in results)
    order = [first_decode_index(backend, m) for m in markers]
    assert order == sorted(order)
    # Never more than two sequences in one forward pass.
    assert max(len({seq for *_, seq, _ in rows}) for rows in backend.decode_log) <= 2


def test_infer_many_admits_its_requests_together(stub_engine, monkeypatch):
    engine, backend = stub_engine(n_seq_max=4, decode_delay=0.02)
    prepare = engine.submissions.prepare

    def slow_prepare(*args):  # each request takes a while to build: the loop would start the first
        time.sleep(0.05)
        return prepare(*args)

    monkeypatch.setattr(engine.submissions, "prepare", slow_prepare)
    markers = [ord(c) for c in "FGHI"]
    streams = engine.infer_many("s", [chr(m) * 40 for m in markers], max_tokens=3, temperature=0)
    results = [s.result() for s in streams]
    assert [r.generated_tokens for r in results] == [
        engine.complete("s", chr(m) * 40, max_tokens=3, temperature=0).generated_tokens for m in markers]
    # All four prompts were in the first forward pass, on ids 0..3.
    first = backend.decode_log[0]
    assert {seq for *_, seq, _ in first} == {0, 1, 2, 3}
    assert engine.infer_many("s", [], max_tokens=1) == []


def test_infer_many_refuses_all_when_one_request_is_bad(stub_engine):
    engine, _ = stub_engine(n_seq_max=4)
    with pytest.raises(InvalidRequestError):
        engine.infer_many("s", ["fine", "also fine"], max_tokens=-1)
    with pytest.raises(ContextOverflowError):
        engine.infer_many("s", ["fine", "x" * 100_000], max_tokens=1, session_id="held")
    # The session the first request claimed was given back: a new request may use it.
    assert engine.complete("s", "fine", max_tokens=1, session_id="held").generated_tokens


def test_prefill_and_decode_rows_share_one_forward_pass(stub_engine):
    engine, backend = stub_engine(n_batch=32, decode_delay=0.001)
    first = engine.infer("s", "a", max_tokens=40, temperature=0)
    it = iter(first)
    next(it)  # first is generating
    second = engine.infer("s", "b" * 100, max_tokens=2, temperature=0)
    second.result()
    mixed = [
        rows for rows in backend.decode_log
        if len({seq for *_, seq, _ in rows}) == 2 and any(not want for *_, want in rows)
    ]
    assert mixed, "a prefill chunk never shared a batch with a decode row"
    # The long prompt was chunked (chunk = max(64, n_batch//4) capped at n_batch = 32 rows).
    assert all(len(rows) <= 32 for rows in backend.decode_log)
    first.cancel()
    list(it)


def test_running_stream_gets_tokens_between_prefill_chunks(stub_engine):
    engine, backend = stub_engine(n_batch=16, n_ctx_seq=512, decode_delay=0.001)
    runner = engine.infer("s", "x", max_tokens=60, temperature=0)
    it = iter(runner)
    next(it)
    long = engine.infer("s", "y" * 200, max_tokens=1, temperature=0)
    long.result()
    runner_seq_ticks = [
        i for i, rows in enumerate(backend.decode_log) if any(t == ord("y") for t, *_ in rows)
    ]
    # The 200-token prompt took many ticks, and the runner decoded in each of them.
    assert len(runner_seq_ticks) >= 200 // 16
    for i in runner_seq_ticks:
        assert sum(1 for _t, _p, _s, want in backend.decode_log[i] if want) >= 1
    runner.cancel()
    list(it)


def test_slots_are_reused_and_samplers_freed(stub_engine):
    engine, backend = stub_engine(n_seq_max=2)
    for i in range(6):
        engine.complete("s", f"p{i}", max_tokens=3, temperature=0)
    assert backend.samplers_created == 6
    seqs = {seq for rows in backend.decode_log for *_, seq, _ in rows}
    assert seqs <= {0, 1}
    assert backend.seqs == {}  # every finished sequence was cleared
    info = engine.model_info("s")
    assert info.in_flight == 0 and info.pending == 0 and info.phase == "idle"


def test_cancel_is_idempotent_and_keeps_partial_output(stub_engine):
    engine, _ = stub_engine(decode_delay=0.005)
    stream = engine.infer("s", "hello", max_tokens=200, temperature=0)
    events = []
    for event in stream:
        events.append(event)
        if sum(isinstance(e, TokenEvent) for e in events) == 3:
            stream.cancel()
            engine.cancel(stream.id)
            stream.cancel()
    done = events[-1]
    assert isinstance(done, DoneEvent) and done.finish_reason == "cancelled"
    n = sum(isinstance(e, TokenEvent) for e in events)
    assert 3 <= n < 200
    assert done.stats.generated_tokens == n


def test_cancel_of_a_waiting_request_ends_it_without_output(stub_engine):
    engine, _ = stub_engine(n_seq_max=1, decode_delay=0.005)
    busy = engine.infer("s", "a", max_tokens=50, temperature=0)
    waiting = engine.infer("s", "b", max_tokens=5, temperature=0)
    waiting.cancel()
    result = waiting.result()
    assert result.finish_reason == "cancelled" and result.generated_tokens == ()
    assert busy.result().finish_reason == "length"


def test_a_failing_request_is_isolated_from_the_others(stub_engine):
    poison = ord("!")
    engine, _ = stub_engine(poison_token=poison, decode_delay=0.001)
    good = engine.infer("s", "fine", max_tokens=30, temperature=0)
    it = iter(good)
    next(it)
    bad = engine.infer("s", "bad!", max_tokens=5, temperature=0)
    with pytest.raises(Exception, match="poison"):
        bad.result()
    rest = list(it)
    assert rest[-1].finish_reason == "length"
    assert sum(isinstance(e, TokenEvent) for e in rest) == 29
    # The loop still serves new requests afterwards.
    assert engine.complete("s", "again", max_tokens=3, temperature=0).finish_reason == "length"


def test_bad_grammar_is_a_typed_error_and_the_loop_survives(stub_engine):
    engine, _ = stub_engine()
    with pytest.raises(GrammarError):
        engine.complete("s", "x", max_tokens=3, grammar="nonsense ::= ")
    assert len(engine.complete("s", "x", max_tokens=3).generated_tokens) == 3


def test_context_overflow_is_raised_before_decoding_and_names_both_numbers(stub_engine):
    engine, backend = stub_engine(n_ctx_seq=32)
    with pytest.raises(ContextOverflowError) as info:
        engine.infer("s", "z" * 40)
    assert info.value.prompt_tokens == 41 and info.value.n_ctx == 32
    assert "41" in str(info.value) and "32" in str(info.value)
    assert backend.decode_log == []


def test_generation_stops_when_the_sequence_context_is_full(stub_engine):
    engine, _ = stub_engine(n_ctx_seq=16)
    r = engine.complete("s", "abc", max_tokens=100, temperature=0)
    assert r.finish_reason == "length"
    assert r.committed_tokens <= 16


def test_eos_ends_with_stop_and_is_not_part_of_the_reply(stub_engine):
    engine, _ = stub_engine(eos_after=4)
    r = engine.complete("s", "abc", max_tokens=100, temperature=0)
    assert r.finish_reason == "stop" and len(r.generated_tokens) == 4
    assert EOS not in r.generated_tokens


def test_stop_sequence_trimmed_from_stream_and_reply(stub_engine):
    engine, _ = stub_engine()
    free = engine.complete("s", "story", max_tokens=30, temperature=0).reply
    stop = free[10:13]
    expected = free[: free.index(stop)]
    stream = engine.infer("s", "story", max_tokens=30, temperature=0, stop=[stop])
    events = list(stream)
    streamed = "".join(e.text for e in events if isinstance(e, TextEvent))
    done = events[-1]
    assert streamed == expected
    assert done.finish_reason == "stop" and done.stop_sequence == stop
    assert stop not in streamed


def test_same_seed_same_output_alone_or_beside_others(stub_engine):
    engine, _ = stub_engine(decode_delay=0.001)
    params = {"max_tokens": 20, "temperature": 0.9, "seed": 1234}
    alone = engine.complete("s", "seeded", **params)
    others = [engine.infer("s", f"other {i}", max_tokens=20, temperature=1.0) for i in range(3)]
    beside = engine.complete("s", "seeded", **params)
    for o in others:
        o.result()
    assert alone.generated_tokens == beside.generated_tokens
    different = engine.complete("s", "seeded", max_tokens=20, temperature=0.9, seed=99)
    assert different.generated_tokens != alone.generated_tokens


def test_token_prompts_are_validated(stub_engine):
    engine, _ = stub_engine()
    assert engine.complete("s", [256, 104, 105], max_tokens=2, temperature=0).stats.prompt_tokens == 3
    with pytest.raises(InvalidRequestError):
        engine.complete("s", [1, 99999])
    with pytest.raises(InvalidRequestError):
        engine.complete("s", [])
    with pytest.raises(InvalidRequestError):
        engine.complete("s", "")


def test_model_registry_errors(stub_engine):
    engine, _ = stub_engine(decode_delay=0.005)
    with pytest.raises(UnknownModelError):
        engine.complete("nope", "x")
    with pytest.raises(ModelExistsError):
        engine.load_model("s")
    stream = engine.infer("s", "x", max_tokens=100)
    with pytest.raises(ModelBusyError):
        engine.unload_model("s")
    engine.unload_model("s", cancel=True)
    assert list(stream)[-1].finish_reason == "cancelled"
    assert engine.list_models() == []


def test_many_async_consumers_share_one_loop(stub_engine):
    engine, _ = stub_engine(n_seq_max=4, decode_delay=0.001)

    finished: list[int] = []
    others_done = asyncio.Event()

    async def one(i: int) -> tuple[int, int]:
        n = 0
        async for event in engine.ainfer("s", f"async {i}", max_tokens=10, temperature=0):
            if isinstance(event, TokenEvent):
                n += 1
            if i == 0 and n == 1:
                # A consumer that stops reading must not stall the others (bounded only so that a
                # stall fails the test instead of hanging it).
                await asyncio.wait_for(others_done.wait(), 60)
        finished.append(i)
        if len(finished) == 7 and 0 not in finished:
            others_done.set()
        return i, n

    async def main():
        return await asyncio.gather(*(one(i) for i in range(8)))

    results = asyncio.run(main())
    assert sorted(results) == [(i, 10) for i in range(8)]
    assert finished[-1] == 0  # the other seven ended while consumer 0 was not reading


def test_abandoning_an_async_stream_cancels_its_request(stub_engine):
    engine, _ = stub_engine(n_seq_max=1, decode_delay=0.002)

    async def main():
        stream = engine.ainfer("s", "abandon", max_tokens=1000)
        async for _event in stream:
            break
        await stream.aclose() if hasattr(stream, "aclose") else None
        # The single slot must free up for the next request.
        return await engine.acomplete("s", "next", max_tokens=3)

    result = asyncio.run(asyncio.wait_for(main(), 10))
    assert len(result.generated_tokens) == 3


def test_threads_can_submit_concurrently(stub_engine):
    engine, _ = stub_engine(n_seq_max=3)
    out: list[int] = []
    lock = threading.Lock()

    def worker(i: int) -> None:
        r = engine.complete("s", f"thread {i}", max_tokens=5, temperature=0)
        with lock:
            out.append(len(r.generated_tokens))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert out == [5] * 10


def test_embed_returns_one_vector_per_text(stub_engine):
    engine, _ = stub_engine()
    a, b, a2 = engine.embed("s", ["alpha", "beta", "alpha"])
    assert a == a2 and a != b
    with pytest.raises(InvalidRequestError):
        engine.embed("s", [])
    # The bounds that keep one call short (api/engine.py): texts, then tokens.
    assert len(engine.embed("s", ["t"] * MAX_EMBED_INPUTS)) == MAX_EMBED_INPUTS
    with pytest.raises(InvalidRequestError, match="split the batch"):
        engine.embed("s", ["t"] * (MAX_EMBED_INPUTS + 1))
    with pytest.raises(InvalidRequestError, match="tokens in one embed call"):
        engine.embed("s", ["x" * (MAX_EMBED_TOKENS // 2)] * 3)


def test_every_batch_has_equal_prompt_chunks_first_then_decode_rows_on_consecutive_ids(stub_engine):
    engine, backend = stub_engine(n_seq_max=4, n_batch=32, n_ctx_seq=512, decode_delay=0.0005)
    streams = [engine.infer("s", "p" * (10 + 17 * i), max_tokens=5 + 7 * i, temperature=0) for i in range(7)]
    for s in streams:
        s.result()
    assert backend.moves, "finishing requests out of order must have compacted the slots"
    shared = 0
    for rows in backend.decode_log:
        # The last row of a prompt's final chunk wants logits too: count rows per sequence.
        per_seq: dict[int, int] = {}
        for _t, _p, seq, _w in rows:
            per_seq[seq] = per_seq.get(seq, 0) + 1
        prompt_seqs = [seq for seq, n in per_seq.items() if n > 1]
        n_prompt_rows = sum(per_seq[s] for s in prompt_seqs)
        assert {r[2] for r in rows[:n_prompt_rows]} == set(prompt_seqs)  # prompt rows first
        assert len({per_seq[s] for s in prompt_seqs}) <= 1  # one chunk size: one ubatch
        first = prompt_seqs[0] if prompt_seqs else 0
        assert prompt_seqs == list(range(first, first + len(prompt_seqs)))  # consecutive ids
        shared += len(prompt_seqs) > 1
        decode = [r[2] for r in rows[n_prompt_rows:]]
        assert decode == list(range(len(decode)))
    assert shared, "prompts admitted together must have shared a tick"


def test_a_prompt_never_shares_a_ubatch_with_a_decoder_even_when_every_id_is_held(stub_engine):
    # Four requests on four ids, no kept sequences: the two short prompts (ids 0 and 3) decode
    # while the long ones (1 and 2) still prefill. Compaction would swap 3 and 1 but has no
    # free id, so decoder 3 sits right after prompt 2: llama.cpp would take it into the
    # prompts' ubatch and cut their chunks. The prompts must then go in a pass of their own.
    engine, backend = stub_engine(n_seq_max=4, n_batch=64, n_ctx_seq=1024, load={"keep_finished": False})
    prompts = ["a" * 10, "b" * 400, "c" * 400, "d" * 10]
    streams = engine.infer_many("s", prompts, max_tokens=30, temperature=0)
    results = [s.result() for s in streams]
    assert all(len(r.generated_tokens) == 30 for r in results)
    log = [_rows_per_seq(rows) for rows in backend.decode_log]
    # The tick with prompt 2 and decoder 3 ran as two passes, prompts first.
    assert any(a.get(2, 0) > 1 and b.get(3) == 1 for a, b in itertools.pairwise(log))
    assert backend.uneven_splits == 0


def _rows_per_seq(rows):
    counts = {}
    for _tok, _pos, seq, _want in rows:
        counts[seq] = counts.get(seq, 0) + 1
    return counts


def test_per_pass_kernels_decode_every_stream_in_one_vector_kernel_pass(stub_engine):
    # The patched build: twelve decoders run as one decode-only pass (no 7-row cap), and a
    # prompt that arrives meanwhile prefills in a pass of its own; the conftest check asserts
    # no row went to another kernel class (a prompt row in a decode-only pass, or 8+ decode
    # rows in a stock pass).
    engine, backend = stub_engine(n_seq_max=16, n_batch=256, n_ctx_seq=512, per_pass_kernels=True,
                                  decode_delay=0.001)
    streams = engine.infer_many("s", [chr(97 + i) * 9 for i in range(12)], max_tokens=40, temperature=0)
    deadline = time.monotonic() + 30
    while not any(only and len(rows) == 12
                  for only, rows in zip(backend.decode_only_log, backend.decode_log, strict=False)):
        assert time.monotonic() < deadline, "the twelve never decoded together"
        time.sleep(0.001)
    late = engine.infer("s", "z" * 300, max_tokens=3, temperature=0)
    late.result()
    for s in streams:
        s.result()
    kinds = list(zip(backend.decode_only_log, backend.decode_log, strict=True))
    assert any(only and len(rows) == 12 for only, rows in kinds)
    assert any(not only and len(rows) > 100 for only, rows in kinds), "the late prompt prefilled"
    assert all(len(_rows_per_seq(rows)) == len(rows) for only, rows in kinds if only)


def test_requests_submitted_separately_within_the_burst_window_prefill_together(stub_engine):
    # Two clients' requests reach an idle loop one after the other (separate infer calls, as
    # two HTTP requests do): the loop waits the burst window for the second, so both prompts
    # go into the first forward pass instead of the first prefilling alone.
    engine, backend = stub_engine(n_seq_max=4, n_batch=256, load={"burst_window_ms": 1000})
    first = engine.infer("s", "a" * 40, max_tokens=2, temperature=0)
    time.sleep(0.05)  # the second client is 50 ms behind (the window is 20x that)
    second = engine.infer("s", "b" * 40, max_tokens=2, temperature=0)
    first.result(), second.result()
    assert {seq for _t, _p, seq, _w in backend.decode_log[0]} == {0, 1}


def test_a_burst_is_gathered_while_its_requests_keep_arriving_within_the_window(stub_engine):
    # Three clients 0.6 s apart with a 1 s window: the third arrives 1.2 s after the first, past
    # one window, but within a window of the second; all three prefill in the first pass.
    engine, backend = stub_engine(n_seq_max=4, n_batch=256, load={"burst_window_ms": 1000})
    streams = []
    for letter in "abc":
        streams.append(engine.infer("s", letter * 40, max_tokens=2, temperature=0))
        time.sleep(0.6)
    for s in streams:
        s.result()
    assert {seq for _t, _p, seq, _w in backend.decode_log[0]} == {0, 1, 2}


def test_burst_window_is_validated():
    from kvllama.errors import InvalidOptionError
    from kvllama.options import ModelOptions

    for bad in (-1, 1001, "5", True):
        with pytest.raises(InvalidOptionError, match="burst_window_ms"):
            ModelOptions.from_kwargs(burst_window_ms=bad)


def _wait_settled(engine, sequences: int) -> None:
    """The settler's counters are written by the loop thread; wait for them, with a bound."""
    deadline = time.monotonic() + 30
    while engine.model_info("s").settled.get("sequences", 0) < sequences:
        assert time.monotonic() < deadline, engine.model_info("s").settled
        time.sleep(0.002)


def test_an_idle_loop_settles_a_kept_reply_so_the_next_turn_prefills_only_its_message(stub_engine):
    engine, backend = stub_engine(n_seq_max=4, n_batch=256, n_ctx_seq=1024)
    first = engine.complete("s", "q" * 40, max_tokens=30, temperature=0)
    _wait_settled(engine, 1)
    # The settle pass recomputed the 30-token reply as a prompt chunk of its own sequence.
    reply = list(first.generated_tokens)
    assert any([r[0] for r in rows] == reply for rows in backend.decode_log)
    follow = (*first.context_tokens, *b"and then?")
    second = engine.complete("s", list(follow), max_tokens=3, temperature=0)
    # The whole transcript came from the kept sequence, reply included.
    assert second.cache_delta.read == len(first.context_tokens)
    info = engine.model_info("s")
    assert info.settled["tokens"] >= len(reply) and info.prompt_reuse["requests"]["kept"] == 1


def test_a_request_arriving_during_a_settle_pass_aborts_it_and_the_reply_is_settled_later(stub_engine):
    engine, backend = stub_engine(n_seq_max=4, n_batch=256, n_ctx_seq=1024, decode_delay=0.2)
    first = engine.complete("s", "q" * 40, max_tokens=12, temperature=0)
    loop = engine.models.get("s").loop
    deadline = time.monotonic() + 30
    # Wait until the settle pass of the 12-token reply is inside the backend.
    while not (loop.settler.running and backend.in_pass):
        assert time.monotonic() < deadline
        time.sleep(0.001)
    other = engine.complete("s", "x" * 9, max_tokens=1, temperature=0)
    assert other.generated_tokens
    _wait_settled(engine, 1)
    assert engine.model_info("s").settled["aborted"] >= 1
    follow = (*first.context_tokens, *b"more text")
    again = engine.complete("s", list(follow), max_tokens=1, temperature=0)
    assert again.cache_delta.read == len(first.context_tokens)


def test_settling_can_be_turned_off(stub_engine):
    engine, _backend = stub_engine(n_seq_max=4, n_batch=256, load={"settle_replies": False})
    first = engine.complete("s", "q" * 40, max_tokens=30, temperature=0)
    follow = (*first.context_tokens, *b"and then?")
    second = engine.complete("s", list(follow), max_tokens=3, temperature=0)
    # The reply was prefilled again: only the prompt came from the slot.
    assert second.cache_delta.read == len(first.context_tokens) - len(first.generated_tokens)
    assert engine.model_info("s").settled == {}


def test_a_warm_request_does_not_wait_out_the_burst_window(stub_engine):
    # A repeat of a prompt still in its slot has a few tokens to prefill: waiting a window for
    # a burst would be most of its time to first token. A cold one still waits (the test above).
    # Asked of the loop's admission directly: no clock in the answer.
    engine, _ = stub_engine(n_seq_max=4, n_batch=256, load={"burst_window_ms": 1000})
    loop = engine.models.get("s").loop
    prompt = "w" * 200

    def gathers(text: str) -> bool:
        _model, r = engine.submissions.prepare("s", GenerationRequest.build(text, max_tokens=2), QueueSink())
        try:
            return bool(loop.call(lambda: loop.admission.worth_gathering(r)).result())
        finally:
            release(r)

    assert gathers(prompt)
    cold = engine.complete("s", prompt, max_tokens=2, temperature=0)
    assert cold.stats.queue_seconds >= 1.0  # cold: it waited the window out
    assert not gathers(prompt + "!")  # its prompt is in a kept sequence but for a few tokens
    again = engine.complete("s", prompt + "!", max_tokens=2, temperature=0)
    assert again.cache_delta.read > 150
