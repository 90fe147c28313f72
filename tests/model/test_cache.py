"""The KV cache on the real model: warm == cold bit for bit, from every tier and after a restart."""

from __future__ import annotations

from dataclasses import replace

import pytest

import kvllama
from kvllama.kvcache import CacheConfig

pytestmark = pytest.mark.slow

WORDS = (
    "harbor lantern quartz meadow violet engine ledger orchard signal canyon mirror "
    "falcon pepper thunder garden silver anchor marble compass velvet ember glacier"
).split(" ")


def long_prompt(n_words: int, seed: int = 0) -> str:
    return "Notes: " + " ".join(WORDS[(i * 7 + seed + i * i) % len(WORDS)] for i in range(n_words))


def tiers(tmp_path, which: str) -> CacheConfig:
    shm, disk = tmp_path / "shm", tmp_path / "disk"
    if which == "ram":
        return CacheConfig(shm_dir=None, disk_dir=None, durable=False)
    if which == "shm":
        return CacheConfig(ram_bytes=0, shm_dir=shm, disk_dir=None, durable=False)
    return CacheConfig(ram_bytes=0, shm_dir=None, disk_dir=disk)


@pytest.fixture(scope="module")
def cold_engine():
    with kvllama.Engine(cache=None) as eng:
        eng.load_model("m")
        yield eng


@pytest.mark.parametrize("n_words", [150, 700])  # below and above the 512-token sliding window
@pytest.mark.parametrize("tier", ["ram", "shm", "disk"])
def test_warm_equals_cold_from_every_tier(tmp_path, cold_engine, tier, n_words):
    prompt = long_prompt(n_words, seed=n_words)
    cold = cold_engine.complete("m", prompt, max_tokens=24, temperature=0)
    with kvllama.Engine(cache=tiers(tmp_path, tier)) as eng:
        eng.load_model("m", keep_finished=False)  # the warm request must come from the tier
        first = eng.complete("m", prompt, max_tokens=24, temperature=0)
        assert first.cache_hit_kind == "cold" and first.generated_tokens == cold.generated_tokens
        _wait_for_saves(eng)
        # Occupy sequence 0 so the warm request is restored into another slot.
        busy = eng.infer("m", "Something else entirely", max_tokens=40, temperature=0)
        warm = eng.complete("m", prompt, max_tokens=24, temperature=0)
        busy.result()
        assert warm.cache_hit_kind == "exact"
        assert warm.cache_delta.read >= cold.stats.prompt_tokens - 8 - 64
        assert warm.generated_tokens == cold.generated_tokens
        assert warm.stats.prefill_seconds < first.stats.prefill_seconds
        metrics = eng.cache_metrics()
        assert metrics["hits_by_tier"][tier] >= 1


def test_disk_rows_survive_a_restart(tmp_path, cold_engine):
    prompt = long_prompt(400, seed=3)
    cold = cold_engine.complete("m", prompt, max_tokens=16, temperature=0)
    config = tiers(tmp_path, "disk")
    with kvllama.Engine(cache=config) as eng:
        eng.load_model("m")
        eng.complete("m", prompt, max_tokens=16, temperature=0)
    with kvllama.Engine(cache=config) as eng:  # a fresh engine: empty RAM, rows adopted from disk
        eng.load_model("m")
        assert eng.list_cached_prefixes("m", prompt) > 300
        warm = eng.complete("m", prompt, max_tokens=16, temperature=0)
        assert warm.cache_hit_kind == "exact"
        assert warm.generated_tokens == cold.generated_tokens


def test_parent_key_resume_and_prefill_only(tmp_path):
    with kvllama.Engine(cache=tiers(tmp_path, "ram")) as eng:
        eng.load_model("m")
        system = long_prompt(300, seed=9)
        key = eng.prefill_only("m", system)
        assert key is not None
        _wait_for_saves(eng)
        n_system = len(eng.tokenize("m", system))
        assert eng.list_cached_prefixes("m", system) == n_system
        system_tokens = eng.tokenize("m", system)
        turn1_prompt = system_tokens + eng.tokenize("m", "\nUser: hello\nAssistant:", add_special=False)
        turn1 = eng.complete("m", turn1_prompt, max_tokens=12, temperature=0, parent_key=key)
        # The system row, cut back if the new message is shorter than the 8-token tail.
        read = min(n_system, len(turn1_prompt) - 8)
        assert turn1.cache_delta.read == read
        assert turn1.cache_hit_kind == ("exact" if read == len(turn1_prompt) - 8 else "partial")
        assert turn1.finish_key is not None and turn1.cache_delta.created > 0
        _wait_for_saves(eng)
        turn2_prompt = list(turn1.context_tokens) + eng.tokenize("m", "\nUser: more\nAssistant:",
                                                                add_special=False)
        turn2 = eng.complete("m", turn2_prompt, max_tokens=8, temperature=0,
                             parent_key=turn1.finish_key)
        # Turn 1's finish row is its prompt (the reply is prefilled again, as a cold run does),
        # unless the idle loop has settled the reply in turn 1's kept sequence (decoding/settling.py)
        # before turn 2 came: then the slot serves the reply too.
        settled = min(len(turn1.context_tokens), len(turn2_prompt) - 8)
        assert turn2.cache_delta.read in (len(turn1_prompt), settled)
        assert turn2.cache_hit_kind in ("partial", "exact")
        # Tenants with another salt never see these rows.
        other = eng.complete("m", turn1_prompt, max_tokens=4, temperature=0, cache_salt="tenant-b")
        assert other.cache_hit_kind == "cold" and other.cache_delta.read == 0


def _wait_for_saves(eng: kvllama.Engine, timeout: float = 30.0) -> None:
    """Every queued save is published: the writer pool's own signal, never the clock."""
    assert eng.cache is not None and eng.cache.flush(timeout)


@pytest.mark.parametrize("tail", [8, 9, 13])  # the smallest suffixes a restore may leave
def test_warm_equals_cold_with_the_shortest_tails(tmp_path, cold_engine, tail):
    tokens = cold_engine.tokenize("m", long_prompt(400, seed=tail))[: 5 * 64 + tail]
    cold = cold_engine.complete("m", tokens, max_tokens=16, temperature=0)
    with kvllama.Engine(cache=tiers(tmp_path, "ram")) as eng:
        eng.load_model("m")
        eng.complete("m", tokens, max_tokens=1, temperature=0)
        _wait_for_saves(eng)
        warm = eng.complete("m", tokens, max_tokens=16, temperature=0)
        # The finish row (the whole prompt) is cut back to leave the 8-token tail.
        assert warm.cache_delta.read == len(tokens) - 8 and warm.cache_hit_kind == "exact"
        assert warm.generated_tokens == cold.generated_tokens


def test_rows_of_another_stream_count_are_never_restored(tmp_path, cold_engine):
    """n_seq_max is in the root; and a blob llama.cpp refuses is a miss, forgotten, never an error."""
    prompt = long_prompt(150, seed=11)
    cold = cold_engine.complete("m", prompt, max_tokens=8, temperature=0)  # n_seq_max=8, the default
    config = tiers(tmp_path, "disk")
    with kvllama.Engine(cache=config) as eng:
        eng.load_model("m")
        eng.complete("m", prompt, max_tokens=8, temperature=0)
    with kvllama.Engine(cache=config) as eng:
        eng.load_model("m", n_seq_max=4)
        assert eng.list_cached_prefixes("m", prompt) == 0  # another root: the 8-stream rows are invisible
        # Force the 8-stream root, as a cache written before n_seq_max was hashed would have it:
        # llama.cpp refuses the blob ("n_stream mismatch"), and the cache forgets the row.
        warm = eng.models.get("m").loop.warm
        warm._base_root = replace(warm._base_root, n_seq_max=8)
        warm._roots.clear()
        assert eng.list_cached_prefixes("m", prompt) > 0
        refused = eng.complete("m", prompt, max_tokens=8, temperature=0)
        assert refused.cache_hit_kind == "cold" and refused.cache_delta.read == 0
        assert refused.generated_tokens == cold.generated_tokens
        metrics = eng.cache_metrics()
        assert metrics["restore_failures"] == 1 and metrics["hits"]["exact"] == 0
