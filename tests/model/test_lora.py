"""LoRA adapters on the real model, with a synthetic adapter written for Gemma 3 270M.

It must change the tokens; scale 0 must equal no adapter; a warm restore with
it must equal a cold run with it; its rows must never serve a request without
it (or with another scale); and requests with different adapter sets running
together must each equal the same request alone.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

import kvllama
from kvllama.bench.synthetic_lora import write_lora
from kvllama.kvcache import CacheConfig
from kvllama.models.default import default_model_path

pytestmark = pytest.mark.slow

M = "lora"
OPTIONS = {"n_seq_max": 4, "n_ctx": 4 * 1024, "n_threads": 2}
GREEDY = {"max_tokens": 10, "temperature": 0.0}
PROMPT = "The capital of France is"
LONG = "Notes: " + " ".join(f"item {i} is stored in hall {i % 7}." for i in range(40))


@pytest.fixture(scope="module")
def adapter(tmp_path_factory: pytest.TempPathFactory) -> str:
    # seed 1: the first generated token already differs (measured when the writer was made).
    return write_lora(default_model_path(), str(tmp_path_factory.mktemp("lora") / "a.gguf"), seed=1)


def _engine(adapter: str, cache: CacheConfig | None, **load: object) -> kvllama.Engine:
    eng = kvllama.Engine(cache=cache)
    eng.load_model(M, **OPTIONS, **load)
    eng.load_adapter(M, "a", adapter, scale=1.0)
    return eng


@pytest.fixture(scope="module")
def cold(adapter: str) -> Iterator[kvllama.Engine]:
    with _engine(adapter, None) as eng:
        yield eng


@pytest.fixture
def warm(adapter: str) -> Iterator[kvllama.Engine]:
    with _engine(adapter, CacheConfig(shm_dir=None, disk_dir=None), keep_finished=False) as eng:
        yield eng


def test_an_adapter_changes_the_tokens_and_scale_zero_is_no_adapter(cold):
    with_it = cold.complete(M, PROMPT, logprobs=0, **GREEDY)  # the model's default set: "a" at 1.0
    without = cold.complete(M, PROMPT, adapters=[], logprobs=0, **GREEDY)
    assert with_it.generated_tokens != without.generated_tokens
    zero = cold.complete(M, PROMPT, adapters=[("a", 0.0)], logprobs=0, **GREEDY)
    assert zero.generated_tokens == without.generated_tokens and zero.logprobs == without.logprobs
    half = cold.complete(M, PROMPT, adapters=[{"id": "a", "scale": 0.5}], logprobs=0, **GREEDY)
    first = [r.logprobs[0].logprob for r in (without, half, with_it)]
    assert len(set(first)) == 3  # every scale moves the model's numbers
    [info] = cold.list_adapters(M)
    assert info["id"] == "a" and info["scale"] == 1.0 and len(info["sha256"]) == 64


def test_warm_equals_cold_with_the_adapter_and_its_rows_serve_no_other_set(warm, cold):
    first = warm.complete(M, LONG, **GREEDY)
    assert warm.cache.flush(30)
    follow = LONG + " Which hall holds item 12?"
    again = warm.complete(M, follow, **GREEDY)
    assert again.cache_delta.read > 200
    assert again.generated_tokens == cold.complete(M, follow, **GREEDY).generated_tokens
    other = warm.complete(M, follow, adapters=[], **GREEDY)
    assert other.cache_delta.read == 0  # a row computed with the adapter is not this request's
    assert other.generated_tokens == cold.complete(M, follow, adapters=[], **GREEDY).generated_tokens
    scaled = warm.complete(M, follow, adapters=[("a", 0.5)], **GREEDY)
    assert scaled.cache_delta.read == 0
    assert first.cache_delta.read == 0


def test_different_adapter_sets_running_together_each_equal_alone(cold):
    sets = [None, [], [("a", 0.5)], None]
    prompts = [f"{PROMPT} {k}" for k in range(4)]
    alone = [cold.complete(M, p, adapters=s, **GREEDY).generated_tokens
             for p, s in zip(prompts, sets, strict=True)]
    gate = threading.Event()
    cold.models.get(M).loop.call(gate.wait)
    streams = [cold.infer(M, p, adapters=s, **GREEDY) for p, s in zip(prompts, sets, strict=True)]
    gate.set()
    assert [s.result().generated_tokens for s in streams] == alone


def test_a_queued_request_keeps_its_set_and_unload_waits_for_it(adapter):
    with _engine(adapter, None) as eng:
        with pytest.raises(kvllama.errors.InvalidRequestError, match="no adapter"):
            eng.complete(M, PROMPT, adapters=[("zz", 1.0)], **GREEDY)
        gate = threading.Event()
        eng.models.get(M).loop.call(gate.wait)
        queued = eng.infer(M, PROMPT, **GREEDY)  # snapshot: "a" at 1.0
        eng.set_adapter_scale(M, "a", 0.0)
        later = eng.infer(M, PROMPT, **GREEDY)  # now: no adapter
        gate.set()
        with_it, without = queued.result(), later.result()
        assert with_it.generated_tokens != without.generated_tokens
        assert without.generated_tokens == eng.complete(M, PROMPT, adapters=[], **GREEDY).generated_tokens
        eng.unload_adapter(M, "a")
        assert eng.list_adapters(M) == []
        assert Path(adapter).exists()
