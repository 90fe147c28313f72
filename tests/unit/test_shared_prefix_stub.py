"""Shared prefixes on the stub backend: kept sequences, save points, followers, the pieces behind them."""

from __future__ import annotations

import threading

import pytest

from kvllama.decoding.fresh_rows import FreshRow, FreshRows
from kvllama.decoding.recent_prefixes import RecentPrefixes
from kvllama.errors import InvalidRequestError
from kvllama.kvcache import CacheConfig, KeyRoot, KvCache
from kvllama.request import ChatInput
from kvllama.server.anthropic.schemas import tools_as_functions

RAM_ONLY = CacheConfig(shm_dir=None, disk_dir=None)


def _hold(engine) -> threading.Event:
    gate = threading.Event()
    engine.models.get("s").loop.call(gate.wait)
    return gate


# --- finished requests kept in their slots ---------------------------------------------------

def test_a_repeat_is_served_in_place_by_the_finished_request(stub_engine):
    engine, backend = stub_engine(n_ctx_seq=1024)  # no KV cache at all: kept sequences need none
    prompt = "r" * 300
    engine.complete("s", prompt, max_tokens=3, temperature=0)
    again = engine.complete("s", prompt + "!", max_tokens=3, temperature=0)
    assert again.cache_delta.read == 302 - 8 and again.cache_hit_kind == "exact"
    assert backend.restores == 0


def test_without_keep_finished_nothing_is_kept(stub_engine):
    engine, _ = stub_engine(n_ctx_seq=1024, load={"keep_finished": False})
    engine.complete("s", "r" * 300, max_tokens=3, temperature=0)
    assert engine.complete("s", "r" * 300 + "!", max_tokens=3, temperature=0).cache_delta.read == 0


def test_kept_sequences_are_per_tenant(stub_engine):
    engine, _ = stub_engine(n_ctx_seq=1024)
    engine.complete("s", "t" * 300, max_tokens=3, temperature=0, cache_salt="a")
    other = engine.complete("s", "t" * 300 + "!", max_tokens=3, temperature=0, cache_salt="b")
    assert other.cache_delta.read == 0
    same = engine.complete("s", "t" * 300 + "!", max_tokens=3, temperature=0, cache_salt="a")
    assert same.cache_delta.read == 302 - 8


def test_kept_sequences_give_their_slots_to_new_requests_least_recent_first(stub_engine):
    engine, backend = stub_engine(n_ctx_seq=1024, n_seq_max=2, cache=RAM_ONLY)
    engine.complete("s", "a" * 300, max_tokens=2, temperature=0)
    engine.complete("s", "b" * 300, max_tokens=2, temperature=0)
    loop = engine.models.get("s").loop
    assert len(loop.kept) == 2
    engine.complete("s", "c" * 300, max_tokens=2, temperature=0)  # takes the oldest's ("a") slot
    assert sorted(r.tokens[1] for r in loop.kept.by_seq.values()) == [ord("b"), ord("c")]
    assert engine.cache.flush(10)
    back = engine.complete("s", "a" * 300 + "!", max_tokens=2, temperature=0)  # "b" gives way
    assert back.cache_delta.read > 0 and backend.restores == 1  # from the cache, not a slot
    kept = engine.complete("s", "c" * 300 + "!", max_tokens=2, temperature=0)
    assert kept.cache_delta.read == 302 - 8 and backend.restores == 1  # still in its slot


# --- save points, followers, recent prompts -----------------------------------------------------

def test_named_save_points_are_saved_on_the_grid(stub_engine):
    engine, _ = stub_engine(n_ctx_seq=1024, cache=RAM_ONLY, load={"keep_finished": False})
    engine.complete("s", "p" * 400, max_tokens=2, temperature=0, save_points=[200, 10, 399])
    assert engine.cache.flush(10)
    lengths = sorted(e.n_tokens for e in engine.cache._index.entries())
    # 192: the named point on the 64-token grid; 10 is too short to be worth a row and 399
    # leaves fewer than 8 tokens; 384 and 401 are the cold and finish rows.
    assert lengths == [192, 384, 401]
    assert engine.cache_metrics()["saves"]["prefix"] == 1


@pytest.mark.parametrize("bad", ["12", [-1], [True], [1.5], list(range(17))])
def test_bad_save_points_are_refused(stub_engine, bad):
    engine, _ = stub_engine(cache=RAM_ONLY)
    with pytest.raises(InvalidRequestError, match="save_points"):
        engine.complete("s", "x" * 50, max_tokens=1, save_points=bad)


def test_a_waiting_follower_asks_the_leader_to_save_where_they_part(stub_engine):
    engine, backend = stub_engine(n_ctx_seq=1024, n_batch=512, n_seq_max=4, decode_delay=0.001,
                                  cache=RAM_ONLY)
    shared = "s" * 250  # parts at 251 tokens (BOS + 250): no cold point falls there
    prompts = [shared + f"{i}" * 150 for i in range(4)]
    gate = _hold(engine)
    streams = [engine.infer("s", p, max_tokens=3, temperature=0) for p in prompts]
    gate.set()
    results = [s.result() for s in streams]
    # The leader saves a row at 192 for later users; the waiting followers copy all 251 shared
    # tokens from its live sequence once its next chunk has computed them.
    assert sorted(r.cache_delta.read for r in results) == [0, 251, 251, 251]
    prefix_rows = sum(1 for rows in backend.decode_log for _t, pos, _s, _w in rows if pos < 251)
    assert prefix_rows == 251  # the shared part was computed once
    assert engine.cache_metrics()["saves"]["prefix"] == 1


def test_the_second_prompt_that_starts_alike_saves_a_row_for_the_third(stub_engine):
    # refuse_truncate: like a model whose rows cannot be cut back (past a sliding window).
    engine, _ = stub_engine(n_ctx_seq=1024, cache=RAM_ONLY, refuse_truncate=True,
                            load={"keep_finished": False})
    shared = "q" * 250
    reads = []
    for i in range(3):
        result = engine.complete("s", shared + f"{i}" * 150, max_tokens=2, temperature=0)
        reads.append(result.cache_delta.read)
        assert engine.cache.flush(10)
    # The first's rows are longer than the shared part and cannot be cut back; the second
    # saves a row where it parts from the first, and the third restores it.
    assert reads == [0, 0, 192]
    assert engine.cache_metrics()["saves"]["prefix"] == 1


def test_recent_prefixes_report_whole_shared_blocks_per_root():
    recent = RecentPrefixes(block_size=64, max_blocks=8)
    a = list(range(300))
    assert recent.observe(b"root", a) == 0
    assert recent.observe(b"root", [*a[:130], 9999, *a[131:]]) == 128
    assert recent.observe(b"other", a) == 0  # another tenant's root shares nothing
    assert len(recent) <= 8


def test_fresh_rows_pick_the_longest_usable_prefix_and_stay_bounded():
    rows = FreshRows(max_rows=2, max_bytes=100)
    rows.add(FreshRow(b"k1", None, (1, 2), b"x" * 10))
    rows.add(FreshRow(b"k2", None, (1, 2, 3, 4), b"x" * 10))
    rows.add(FreshRow(b"k3", "t", (1, 2, 3), b"x" * 10))  # the oldest (k1) goes
    assert rows.longest((1, 2, 3, 4, 5), None, max_len=4).key == b"k2"
    assert rows.longest((1, 2, 3, 4, 5), None, max_len=3) is None
    assert rows.longest((1, 2, 3, 9), "t", max_len=10).key == b"k3"
    assert rows.covers((1, 2, 3, 4, 5), None, 4) and not rows.covers((1, 2, 3), None, 3)
    rows.add(FreshRow(b"big", None, (1,), b"x" * 101))  # over the byte budget: not kept
    assert len(rows) == 2


def test_the_cache_finds_a_longer_row_that_starts_like_the_prompt(tmp_path):
    root = KeyRoot(model_fingerprint="sha256:0", type_k="f16", type_v="f16", flash_attn=False,
                   kv_unified=False, n_seq_max=4, state_version="test")
    with KvCache(RAM_ONLY) as cache:
        saved = list(range(1, 301))
        key = cache.save(root, saved, b"b" * 4096, "cold", sync=True)
        prompt = [*saved[:200], 7, 7, 7]
        hit, shared = cache.lookup_shared(root, prompt, max_len=len(prompt))
        assert hit.key == key and hit.n_tokens == 300 and shared == 192 and hit.source == "shared"
        assert cache.lookup_shared(root, [5, *prompt], max_len=200) is None
        assert cache.find_row(root, saved) == key and cache.find_row(root, saved[:-1]) is None


# --- where a chat's shared prefixes end -----------------------------------------------------------

def test_chat_save_points_mark_the_system_prompt_and_the_history(stub_engine):
    engine, _ = stub_engine(cache=RAM_ONLY)
    messages = [{"role": "system", "content": "Rules. " * 30}, {"role": "user", "content": "Hi."},
                {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Bye?"}]
    prompt = engine.chat_prompt("s", ChatInput.of(messages), find_save_points=True)
    tokens = prompt.tokens
    assert list(tokens) == engine.tokenize("s", prompt.text)
    text_at = [engine.detokenize("s", tokens[1:p]) for p in prompt.save_points]
    assert text_at == [prompt.text[: prompt.text.index("Hi.")], prompt.text[: prompt.text.index("Bye?")]]


def test_anthropic_cache_control_blocks_become_save_points(stub_engine):
    engine, _ = stub_engine(cache=RAM_ONLY)
    doc = {"type": "text", "text": "Doc. " * 40, "cache_control": {"type": "ephemeral"}}
    messages = [{"role": "user", "content": [doc, {"type": "text", "text": "Question?"}]}]
    from kvllama.chat import prefix_points
    marks = prefix_points.anthropic_breakpoints(messages, None, None, tools_as_functions)
    prompt = engine.chat_prompt("s", ChatInput.of(messages, breakpoints=marks), find_save_points=True)
    assert len(prompt.save_points) == 1
    assert engine.detokenize("s", prompt.tokens[1 : prompt.save_points[0]]).endswith("Doc. Doc. ")
    # No breakpoints, one turn: nothing to mark.
    plain = engine.chat_prompt("s", ChatInput.of(messages), find_save_points=True)
    assert plain.save_points == ()


def test_prompt_reuse_is_counted_by_source(stub_engine):
    engine, _ = stub_engine(n_ctx_seq=1024, cache=RAM_ONLY)
    engine.complete("s", "u" * 300, max_tokens=2, temperature=0)                       # none
    engine.complete("s", "u" * 300 + "!", max_tokens=2, temperature=0)                 # slot
    engine.complete("s", "v" * 300, max_tokens=2, temperature=0, session_id="k")       # none
    engine.complete("s", "v" * 300 + "?", max_tokens=2, temperature=0, session_id="k") # session
    engine.complete("s", "v" * 200 + "w" * 100, max_tokens=2, temperature=0)          # live
    reuse = engine.model_info("s").prompt_reuse
    assert reuse["requests"] == {"session": 1, "kept": 1, "live": 1, "memory": 0, "cache": 0, "none": 2}
    assert reuse["tokens"]["kept"] == 302 - 8 and reuse["tokens"]["session"] == 302 - 8
    # The 201 tokens it shares with the session (BOS too), cut to the grid to be saved as a row.
    assert reuse["tokens"]["live"] == 192
    assert reuse["prompt_tokens"] == 301 + 302 + 301 + 302 + 301
    assert reuse["reused_fraction"] == pytest.approx((2 * 294 + 192) / 1507)
