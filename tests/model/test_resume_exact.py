"""A resumed conversation equals a cold run of the same tokens, however it is served.

Turn 2 is turn 1's ``context_tokens`` plus a new message. Served from a sticky
session, from turn 1's finish row (``parent_key``), from a session evicted to
the cache, after a restart (disk tier), and in a burst beside other requests,
its tokens must equal those of an engine without any cache computing the same
token list from scratch: greedy and seeded, below and above the 512-token
sliding window. Before the reply's decode-computed KV was re-prefilled on
resume, greedy output diverged from the cold run at about the 8th token.

Every test runs on both architectures: the embedded Gemma 3 270M (sliding
window) and SmolLM2-135M-Instruct (llama, none).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import kvllama
from kvllama.decoding.request import resume_point
from kvllama.kvcache import CacheConfig
from kvllama.models.smollm2 import smollm2_model_path

pytestmark = pytest.mark.slow

M = "resume"
OPTIONS = {"n_seq_max": 4, "n_ctx": 4 * 2048, "n_threads": 2}
TOPICS = ("rivers", "printing", "bridges", "harvests", "lanterns", "ledgers", "orchards")
CASES = [
    pytest.param(64, {"temperature": 0.0}, id="greedy-below-window"),
    pytest.param(64, {"temperature": 0.8, "seed": 11}, id="seeded-below-window"),
    # ~1,020 and ~1,400-token prompts: resumes on the 64-token grid above the window.
    pytest.param(250, {"temperature": 0.0}, id="greedy-above-window"),
    pytest.param(250, {"temperature": 0.8, "seed": 11}, id="seeded-above-window"),
    pytest.param(340, {"temperature": 0.0}, id="greedy-1400-tokens"),
]


def _text(words: int, seed: int = 0) -> str:
    return " ".join(f"{TOPICS[(i + seed) % len(TOPICS)]} {i + seed * 1000}" for i in range(words // 2))


@pytest.fixture(scope="module", params=["gemma3", "smollm2"])
def model_path(request: pytest.FixtureRequest) -> str | None:
    return smollm2_model_path() if request.param == "smollm2" else None


@pytest.fixture(scope="module")
def disk(tmp_path_factory: pytest.TempPathFactory, model_path: str | None) -> Path:
    return tmp_path_factory.mktemp("resume-disk")


@pytest.fixture(scope="module")
def warm(disk: Path, model_path: str | None) -> Iterator[kvllama.Engine]:
    with kvllama.Engine(cache=CacheConfig(ram_bytes=0, shm_dir=None, disk_dir=disk)) as eng:
        eng.load_model(M, model_path, **OPTIONS)
        yield eng


@pytest.fixture(scope="module")
def cold(model_path: str | None) -> Iterator[kvllama.Engine]:
    with kvllama.Engine(cache=None) as eng:
        eng.load_model(M, model_path, **OPTIONS)
        yield eng


def _turn2(engine: kvllama.Engine, turn1: kvllama.CompletionResult, message: str) -> list[int]:
    return [*turn1.context_tokens, *engine.tokenize(M, message, add_special=False)]


def _kept_live(n_prompt: int, window: int) -> tuple[int, int]:
    """(tokens a parked turn keeps live, the grid row below it).

    A finished turn keeps its whole prompt live when a row on the 64-token
    resume grid below it is cached already (its cold row, at (n - 8) // 64 * 64),
    else it is cut to the grid so its finish row can be saved there.
    """
    grid = resume_point(n_prompt, window)
    live = n_prompt if grid == n_prompt or (n_prompt - 8) // 64 * 64 == grid else grid
    return live, grid


def _settled_after(engine: kvllama.Engine, before: int) -> None:
    """Wait until the idle loop has settled one more reply (decoding/settling.py), with a bound."""
    deadline = time.monotonic() + 120
    while engine.model_info(M).settled["sequences"] <= before:
        assert time.monotonic() < deadline, engine.model_info(M).settled
        time.sleep(0.01)


def _hold(engine: kvllama.Engine) -> threading.Event:
    """Block the model's loop until the returned event is set, so submissions arrive together."""
    gate = threading.Event()
    engine.models.get(M).loop.call(gate.wait)
    return gate


@pytest.mark.parametrize(("words", "sampling"), CASES)
def test_turn_two_equals_a_cold_run_served_every_way(warm, cold, disk, model_path, words, sampling):
    params = {"max_tokens": 16, **sampling}
    prompt = _text(words, seed=words)
    sid = f"conv-{words}-{sampling['temperature']}"
    settled = warm.model_info(M).settled["sequences"]
    turn1 = warm.complete(M, prompt, max_tokens=12, session_id=sid, **sampling)
    n_prompt1 = len(turn1.context_tokens) - len(turn1.generated_tokens)
    assert len(turn1.generated_tokens) == 12 and turn1.finish_key is not None
    p2 = _turn2(warm, turn1, " Then the story turns to winter.")
    expected = cold.complete(M, p2, **params).generated_tokens
    assert len(expected) == 16

    # The idle loop recomputes the parked reply as prompt chunks: the next turn reuses the
    # whole transcript (all but the prompt's last 8 tokens at most), and still equals a cold run.
    _settled_after(warm, settled)
    sticky = warm.complete(M, p2, session_id=sid, **params)
    _live, kept = _kept_live(n_prompt1, warm.models.get(M).backend.shape.swa_window)
    assert sticky.cache_hit_kind == "sticky"
    assert sticky.cache_delta.read == min(len(turn1.context_tokens), len(p2) - 8)
    assert sticky.generated_tokens == expected

    by_parent = warm.complete(M, p2, parent_key=turn1.finish_key, **params)
    assert by_parent.cache_delta.read >= kept
    assert by_parent.generated_tokens == expected

    # The session (now holding turn 2's prompt) is evicted to the cache; turn 2 again.
    assert warm.end_session(sid) is True
    evicted = warm.complete(M, p2, **params)
    assert evicted.cache_hit_kind in ("exact", "partial") and evicted.cache_delta.read >= kept
    assert evicted.generated_tokens == expected

    assert warm.cache.flush(30)
    with kvllama.Engine(cache=CacheConfig(ram_bytes=0, shm_dir=None, disk_dir=disk)) as restarted:
        restarted.load_model(M, model_path, **OPTIONS)
        after = restarted.complete(M, p2, **params)
    assert after.cache_delta.read >= kept and after.generated_tokens == expected

    gate = _hold(warm)
    others = [warm.infer(M, _text(40, seed=s), max_tokens=20, temperature=0.7, seed=s) for s in range(3)]
    beside = warm.infer(M, p2, **params)
    gate.set()
    assert beside.result().generated_tokens == expected
    for other in others:
        assert other.result().finish_reason in ("length", "stop")


@pytest.mark.parametrize("settle", [False, True], ids=["prefilled-on-resume", "settled-while-idle"])
def test_a_long_reply_is_cut_back_and_resumed_exactly(warm, cold, model_path, settle):
    # 600 generated tokens (decode rows) are cut off the parked session. Without settling they
    # are prefilled by turn 2 as part of its prompt; with it (the default) the idle loop has
    # recomputed them as prompt chunks and turn 2 reuses them. Either way turn 2 equals a
    # cold run of the same tokens.
    prompt = _text(200, seed=5)
    engine = warm
    if not settle:
        engine = kvllama.Engine(cache=None)
        engine.load_model(M, model_path, settle_replies=False, **OPTIONS)
    try:
        settled = warm.model_info(M).settled["sequences"]
        turn1 = engine.complete(M, prompt, max_tokens=600, temperature=0, stop_at_eog=False,
                                session_id="long")
        assert len(turn1.generated_tokens) == 600
        if settle:
            _settled_after(warm, settled)
        p2 = _turn2(engine, turn1, " Next.")
        resumed = engine.complete(M, p2, max_tokens=12, temperature=0, session_id="long")
    finally:
        if engine is not warm:
            engine.close()
    n_prompt1 = len(turn1.context_tokens) - 600
    live, _grid = _kept_live(n_prompt1, warm.models.get(M).backend.shape.swa_window)
    read = min(len(turn1.context_tokens), len(p2) - 8) if settle else live
    assert resumed.cache_hit_kind == "sticky" and resumed.cache_delta.read == read
    assert resumed.generated_tokens == cold.complete(M, p2, max_tokens=12, temperature=0).generated_tokens
