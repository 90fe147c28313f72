"""The scale-out routing policy (kvllama.ray.policy) and the probe it reads, without Ray."""

from __future__ import annotations

import pickle
import random
import time
from dataclasses import replace

import pytest

import kvllama.errors as errors
from kvllama.api.probes import RoutingSnapshot
from kvllama.kvcache import CacheConfig
from kvllama.kvcache.keys import KeyChain, KeyRoot
from kvllama.ray.policy import AffinityPolicy, RouteInfo, RouteKind

ROOT = KeyRoot(model_fingerprint="m", type_k="f16", type_v="f16", flash_attn="auto", kv_unified=False,
               n_seq_max=4, state_version="1")
SYSTEM = list(range(1000, 1000 + 320))  # five 64-token blocks


def snapshot(tokens: list[int] | None = None, *, salt: str | None = None, sessions=(), pending: int = 0,
             in_flight: int = 0, model_id: str = "m") -> RoutingSnapshot:
    blocks: frozenset[bytes] = frozenset()
    if tokens:
        root = replace(ROOT, cache_salt=salt)
        blocks = frozenset(KeyChain(root.digest, tokens, 64).block_values(len(tokens) // 64))
    return RoutingSnapshot(model_id=model_id, root=ROOT, block_size=64, blocks=blocks,
                           sessions=frozenset(sessions), pending=pending, in_flight=in_flight, n_seq_max=4)


def policy(**kwargs: object) -> AffinityPolicy:
    return AffinityPolicy(rng=random.Random(0), **kwargs)  # type: ignore[arg-type]


def route(tokens: list[int], **kwargs: object) -> RouteInfo:
    return RouteInfo(model_id="m", tokens=tuple(tokens), **kwargs)  # type: ignore[arg-type]


def test_the_replica_holding_the_longest_prefix_wins():
    p = policy()
    p.report("a", [snapshot(SYSTEM[:128])])
    p.report("b", [snapshot(SYSTEM)])
    best = p.rank(route([*SYSTEM, 7, 8, 9]), ["a", "b"])[0]
    assert (best.replica, best.kind, best.matched_tokens) == ("b", RouteKind.AFFINITY, 320)
    assert p.matched_tokens(route([*SYSTEM, 7]), "a") == 128


def test_a_whole_prompt_match_still_leaves_a_token_to_compute():
    p = policy()
    p.report("a", [snapshot(SYSTEM)])
    assert p.matched_tokens(route(SYSTEM), "a") == 256  # the last block is recomputed, as the engine does


def test_small_gains_go_to_the_least_loaded_replica():
    p = policy()
    p.report("a", [snapshot(SYSTEM[:64], in_flight=3)])
    p.report("b", [snapshot(None)])
    best = p.rank(route(SYSTEM[:60]), ["a", "b"])[0]  # under one block: nothing to gain
    assert (best.replica, best.kind) == ("b", RouteKind.LOAD)
    p = policy(min_gain_tokens=128)
    p.report("a", [snapshot(SYSTEM[:64])])
    p.report("b", [snapshot(None, in_flight=1)])
    assert p.rank(route(SYSTEM[:100]), ["a", "b"])[0].kind == RouteKind.LOAD  # 64 < 128


def test_a_prefix_outweighs_a_busy_replica_with_free_slots_but_not_a_full_one():
    p = policy()
    p.report("a", [snapshot(SYSTEM, in_flight=3)])  # 4 slots: the next request is batched
    p.report("b", [snapshot(None)])
    assert p.rank(route([*SYSTEM, 1]), ["a", "b"])[0].replica == "a"  # 1 + 3 x 16 < 321
    p.report("a", [snapshot(SYSTEM, in_flight=4)])  # full: it would wait for a slot
    assert p.rank(route([*SYSTEM, 1]), ["a", "b"])[0].replica == "b"  # 1 + 64 + 512 > 321
    p.report("a", [snapshot(SYSTEM, in_flight=1, sessions=[(None, "x"), (None, "y"), (None, "z")])])
    assert p.rank(route([*SYSTEM, 1]), ["a", "b"])[0].replica == "b"  # parked sessions hold the slots


def test_cold_prompts_spread_over_equally_loaded_replicas():
    p = policy()
    chosen = set()
    for i in range(20):
        decision = p.rank(route([i] * 10), ["a", "b"])[0]
        assert decision.kind == RouteKind.LOAD
        chosen.add(decision.replica)
    assert chosen == {"a", "b"}


def test_what_was_routed_is_remembered_before_any_report():
    p = policy()
    first = p.rank(route([*SYSTEM, 1]), ["a", "b"])[0]
    p.routed(route([*SYSTEM, 1]), first.replica, "r1")
    p.completed(first.replica, "r1")
    again = p.rank(route([*SYSTEM, 1, 2, 3]), ["a", "b"])[0]
    assert (again.replica, again.kind) == (first.replica, RouteKind.AFFINITY)


def test_routed_memory_expires():
    p = policy(memory_seconds=0.0)
    p.routed(route([*SYSTEM, 1]), "a", "r1")
    time.sleep(0.01)
    assert p.matched_tokens(route([*SYSTEM, 1]), "a") == 0


def test_sessions_are_sticky_by_report_and_by_memory():
    p = policy()
    p.report("a", [snapshot(None, sessions=[(None, "s1")])])
    p.report("b", [snapshot(SYSTEM)])
    best = p.rank(route([*SYSTEM, 1], session_id="s1"), ["a", "b"])[0]
    assert (best.replica, best.kind) == ("a", RouteKind.STICKY)
    p.routed(route([5] * 10, session_id="s2"), "b", "r1")
    assert p.rank(route([5] * 20, session_id="s2"), ["a", "b"])[0].replica == "b"
    # Another tenant's session of the same id is not that session.
    assert p.rank(route([5] * 20, session_id="s1", cache_salt="t"), ["a", "b"])[0].kind != RouteKind.STICKY


def test_a_fork_lives_with_its_source():
    p = policy()
    p.routed(route([1] * 10, session_id="src", new_session_id="copy"), "b", "r1")
    assert p.rank(route([1] * 12, session_id="copy"), ["a", "b"])[0] .replica == "b"


def test_tenants_never_match_each_others_rows():
    p = policy()
    p.report("a", [snapshot(SYSTEM, salt="t1")])
    assert p.matched_tokens(route([*SYSTEM, 1], cache_salt="t1"), "a") == 320
    assert p.matched_tokens(route([*SYSTEM, 1], cache_salt="t2"), "a") == 0
    assert p.matched_tokens(route([*SYSTEM, 1]), "a") == 0


def test_requests_with_their_own_adapters_are_routed_by_load():
    p = policy()
    p.report("a", [snapshot(SYSTEM)])
    assert p.matched_tokens(route([*SYSTEM, 1], own_adapters=True), "a") == 0


def test_a_replica_that_went_away_is_forgotten():
    p = policy()
    p.report("a", [snapshot(SYSTEM, sessions=[(None, "s")])])
    p.routed(route([3] * 5, session_id="s"), "a", "r1")
    p.forget("a")
    assert p.rank(route([*SYSTEM, 1], session_id="s"), ["b"])[0] .replica == "b"
    assert p.replicas() == {}


def test_snapshot_of_a_stub_engine_lists_cached_blocks_slots_and_sessions(stub_engine, tmp_path):
    engine, _ = stub_engine(cache=CacheConfig(ram_bytes=1 << 24, shm_dir=None), load={"n_seq_max": 4})
    prompt = list(range(5, 5 + 200))
    engine.complete("s", prompt, max_tokens=2, session_id="conv")
    engine.cache.flush()  # type: ignore[union-attr]
    snap = engine.routing_snapshot("s")
    assert snap.sessions == {(None, "conv")}
    assert snap.root is not None and snap.in_flight == 0 and snap.free_slots == 3
    p = AffinityPolicy()
    p.report("r", [snap])
    assert p.matched_tokens(RouteInfo("s", tuple([*prompt, 1, 2])), "r") == 192
    assert p.matched_tokens(RouteInfo("s", tuple(prompt), cache_salt="other"), "r") == 0
    assert pickle.loads(pickle.dumps(snap)) == snap


@pytest.mark.parametrize("cls", [c for c in vars(errors).values()
                                 if isinstance(c, type) and issubclass(c, errors.KvllamaError)])
def test_every_error_crosses_a_process_boundary_intact(cls):
    """Replicas send typed errors to the ingress pickled; each must come back as itself."""
    samples = {errors.InvalidOptionError: ("top_k", -1, "an int >= 0"),
               errors.ContextOverflowError: (9000, 4096),
               errors.BatchOverflowError: (600, 512), errors.DecodeError: (-3, "boom"),
               errors.NoKvSlotError: (1,), errors.DecodeAbortedError: (2,), errors.DecodeTimeoutError: (2,)}
    args = samples.get(cls)
    if args is None:
        try:
            error = cls("why")
        except TypeError:
            error = cls("m")  # one-argument constructors taking an id
    else:
        error = cls(*args)
    back = pickle.loads(pickle.dumps(error))
    assert type(back) is cls and str(back) == str(error) and back.__dict__ == error.__dict__


def test_the_first_choice_is_tried_alone_until_the_fallback_window_ends():
    p = policy(fallback_after_seconds=2.0)
    p.report("a", [snapshot(SYSTEM)])
    p.report("b", [snapshot(None)])
    ranked = p.rank(route([*SYSTEM, 1]), ["a", "b"])
    assert p.tiers(ranked, 0.0) == p.tiers(ranked, 1.9) == [["a"]]
    assert p.tiers(ranked, 2.0) == [["a"], ["b"]]
    assert p.tiers(ranked[:1], 10.0) == [["a"]]
    assert p.tiers([], 0.0) == []


def test_requests_ranked_but_not_yet_sent_count_as_load():
    p = policy()
    assert p.rank(route([1] * 10), ["a", "b"], planned={"a": 1})[0].replica == "b"
    assert p.rank(route([1] * 10), ["a", "b"], planned={"b": 2, "a": 1})[0].replica == "a"
    p.report("a", [snapshot(SYSTEM)])  # a cached prefix outweighs a planned request or two
    assert p.rank(route([*SYSTEM, 1]), ["a", "b"], planned={"a": 2})[0].replica == "a"


def test_a_request_that_completes_before_its_routing_is_reported_is_not_left_running():
    p = policy()
    p.completed("a", "fast")  # Ray's completion callback can run first for a quick reply
    p.routed(route([1] * 10), "a", "fast")
    p.routed(route([2] * 10), "a", "slow")
    assert p.in_flight("a") == 1
    p.completed("a", "slow")
    assert p.in_flight("a") == 0


def test_a_report_taken_before_requests_completed_does_not_count_them():
    p = policy()
    p.report("a", [snapshot(SYSTEM, in_flight=4)])  # full when the report was taken
    p.report("b", [snapshot(None)])
    assert p.rank(route([*SYSTEM, 1]), ["a", "b"])[0].replica == "b"
    for i in range(3):  # three of those finished since
        p.completed("a", f"r{i}")
    assert p.rank(route([*SYSTEM, 1]), ["a", "b"])[0].replica == "a"
