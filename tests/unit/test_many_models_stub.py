"""Many models in one engine on the stub backend: on demand, keep-alive, a budget, rows that survive.

Each model id gets its own stub backend (the factory counts loads and closes),
so what is loaded when is visible without timing anything: the tests wait on
the registry's own state, never on the clock, except to let a keep-alive of
a fraction of a second run out.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import kvllama
from kvllama.backend.stub import StubBackend, StubConfig
from kvllama.errors import ModelBusyError, ModelCapacityError, UnknownModelError
from kvllama.kvcache import CacheConfig

RAM_ONLY = CacheConfig(shm_dir=None, ram_bytes=64 << 20)


class Factory:
    """Builds a stub backend per load and remembers them (a failing model id raises instead)."""

    def __init__(self, **config: Any) -> None:
        self.config = config
        self.loads: list[str] = []
        self.backends: list[StubBackend] = []
        self.fail: set[str] = set()
        self.gate: threading.Event | None = None

    def __call__(self, path: str | None, options: Any) -> StubBackend:
        name = path or "default"
        if self.gate is not None:
            self.gate.wait(10)
        if name in self.fail:
            raise kvllama.errors.MalformedModelError(f"{name}: not a GGUF model")
        self.loads.append(name)
        backend = StubBackend(StubConfig(**self.config))
        self.backends.append(backend)
        return backend


@pytest.fixture
def many(tmp_path) -> Iterator[Callable[..., tuple[kvllama.Engine, Factory]]]:
    engines: list[kvllama.Engine] = []

    def make(models: tuple[str, ...] = ("a", "b", "c"), cache: object = None, **engine_args: Any):
        factory = Factory()
        engine = kvllama.Engine(cache=cache, backend_factory=factory, **engine_args)  # type: ignore[arg-type]
        for name in models:
            path = tmp_path / f"{name}.gguf"
            path.write_bytes(b"x" * 1000)
            engine.register_model(name, str(path))
        engines.append(engine)
        return engine, factory

    yield make
    for engine in engines:
        engine.close()


def loaded(engine: kvllama.Engine) -> list[str]:
    return sorted(info.id for info in engine.list_models())


def stem(path: str) -> str:
    return path.rsplit("/", 1)[-1].removesuffix(".gguf")


def test_a_registered_model_loads_on_its_first_use_and_stays(many):
    engine, factory = many()
    assert loaded(engine) == [] and factory.loads == []
    assert {k.id: k.loaded for k in engine.known_models()} == {"a": False, "b": False, "c": False}
    first = engine.complete("a", "hello", max_tokens=3, temperature=0)
    assert loaded(engine) == ["a"] and [stem(p) for p in factory.loads] == ["a"]
    again = engine.complete("a", "hello", max_tokens=3, temperature=0)
    assert again.generated_tokens == first.generated_tokens and len(factory.loads) == 1
    with pytest.raises(UnknownModelError):
        engine.complete("nope", "hello", max_tokens=1)


def test_a_budget_of_one_model_swaps_the_least_recently_used_idle_one(many):
    engine, factory = many(max_loaded_models=1)
    replies = {m: engine.complete(m, "hello", max_tokens=4, temperature=0).generated_tokens for m in "abab"}
    assert loaded(engine) == ["b"]
    assert [stem(p) for p in factory.loads] == ["a", "b", "a", "b"]
    assert all(b.closed for b in factory.backends[:-1]) and not factory.backends[-1].closed
    assert replies["a"] == engine.complete("a", "hello", max_tokens=4, temperature=0).generated_tokens


def test_a_model_in_use_is_never_unloaded_and_the_load_waits_then_gives_up(many):
    engine, _ = many(max_loaded_models=1, load_wait=0.3)
    engine.touch_model("a")
    held = engine.models.acquire("a")  # a request of "a" in flight
    with pytest.raises(ModelCapacityError) as refused:
        engine.complete("b", "hello", max_tokens=1)
    assert refused.value.retry_after >= 1 and loaded(engine) == ["a"]
    engine.models.release("a")
    assert engine.complete("b", "hello", max_tokens=1).generated_tokens  # now "a" is idle: swapped
    assert loaded(engine) == ["b"] and held.backend.closed


def test_keep_alive_zero_unloads_after_the_request_and_a_short_one_expires(many):
    engine, _ = many(keep_alive=-1)
    engine.complete("a", "hello", max_tokens=2, keep_alive=0)
    wait_until(lambda: loaded(engine) == [])
    engine.complete("b", "hello", max_tokens=2, keep_alive="200ms")
    (b,) = [k for k in engine.known_models() if k.id == "b"]
    assert b.loaded and b.expires_in is not None and b.expires_in <= 0.2
    wait_until(lambda: loaded(engine) == [])
    engine.complete("c", "hello", max_tokens=2)  # the engine's default: for ever
    (c,) = [k for k in engine.known_models() if k.id == "c"]
    assert c.loaded and c.expires_in is None


def test_a_failed_load_answers_every_waiter_with_its_error(many):
    engine, factory = many()
    factory.fail.add(engine.models.entry("a").path)
    factory.gate = threading.Event()
    errors: list[BaseException] = []

    def ask() -> None:
        try:
            engine.complete("a", "hello", max_tokens=1)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=ask) for _ in range(3)]
    for t in threads:
        t.start()
    wait_until(lambda: engine.models.residency.states.get("a") is not None)
    factory.gate.set()
    for t in threads:
        t.join(10)
    assert len(errors) == 3 and all(isinstance(e, kvllama.errors.MalformedModelError) for e in errors)
    factory.fail.clear()
    assert engine.complete("a", "hello", max_tokens=1).generated_tokens  # a later load is tried anew


def test_adapters_and_rows_survive_an_unload(many, tmp_path):
    engine, factory = many(cache=RAM_ONLY)
    engine.load_adapter("a", "style", str(tmp_path / "style.gguf"), scale=0.5)
    prompt = "p" * 150
    cold = engine.complete("a", prompt, max_tokens=4, temperature=0)
    engine.unload_model("a")
    assert loaded(engine) == [] and [k.id for k in engine.known_models()] == ["a", "b", "c"]
    warm = engine.complete("a", prompt, max_tokens=4, temperature=0)
    assert len(factory.loads) == 2 and factory.backends[1].adapters.keys() == {"style"}
    assert [(a["id"], a["scale"]) for a in engine.list_adapters("a")] == [("style", 0.5)]
    assert warm.generated_tokens == cold.generated_tokens
    assert warm.cache_delta.read > 0  # reloaded, restored from the row its first run saved


def test_unloading_a_busy_model_is_refused_and_forgetting_makes_it_unknown(many):
    engine, _ = many()
    engine.touch_model("a")
    engine.models.acquire("a")
    with pytest.raises(ModelBusyError):
        engine.unload_model("a")
    engine.models.release("a")
    engine.forget_model("a")
    assert [k.id for k in engine.known_models()] == ["b", "c"]
    with pytest.raises(UnknownModelError):
        engine.complete("a", "x", max_tokens=1)


def test_a_waiting_load_gets_its_turn_while_the_other_model_keeps_being_asked(many):
    # Budget of one, "a" busy with a stream of requests: after switch_after, new requests for "a"
    # wait, "a" drains, "b" loads and answers; no request fails.
    engine, _ = many(max_loaded_models=1, load_wait=20)
    engine.models.residency.budget = engine.models.residency.budget.__class__(
        max_loaded=1, load_wait=20, switch_after=0.2)
    engine.touch_model("a")
    stop = threading.Event()
    done: list[str] = []

    def keep_asking_a() -> None:
        while not stop.is_set():
            engine.complete("a", "hello", max_tokens=2)
            done.append("a")

    worker = threading.Thread(target=keep_asking_a)
    worker.start()
    wait_until(lambda: len(done) >= 2)
    assert engine.complete("b", "hello", max_tokens=2).generated_tokens
    done.append("b")
    stop.set()
    worker.join(20)
    assert "b" in done and not worker.is_alive()


def wait_until(condition: Callable[[], bool], limit: float = 10.0) -> None:
    deadline = time.monotonic() + limit
    while not condition():
        assert time.monotonic() < deadline, "the condition never held"
        time.sleep(0.01)


def test_a_model_being_loaded_says_so_and_a_capacity_refusal_is_a_503_with_retry_after(many):
    from starlette.testclient import TestClient

    from kvllama.server import ServerConfig, create_app

    engine, factory = many(max_loaded_models=1, load_wait=0.2)
    factory.gate = threading.Event()
    loader = threading.Thread(target=engine.touch_model, args=("a",))
    loader.start()
    wait_until(lambda: any(k.loading for k in engine.known_models()))
    with TestClient(create_app(engine, ServerConfig())) as client:
        assert {m["id"]: m["phase"] for m in client.get("/status").json()["models"]}["a"] == "loading"
        factory.gate.set()
        loader.join(10)
        engine.models.acquire("a")  # "a" busy: "b" cannot fit within load_wait
        r = client.post("/v1/completions", json={"model": "b", "prompt": "x", "max_tokens": 1})
        assert r.status_code == 503 and int(r.headers["retry-after"]) >= 1
        assert r.json()["error"]["code"] == "model_capacity"
        engine.models.release("a")


def test_a_memory_budget_unloads_the_least_recently_used_idle_models_first(tmp_path):
    sizes = {"big": 600, "mid": 300, "small": 200}

    def factory(path: str | None, options: Any) -> StubBackend:
        return StubBackend(StubConfig(size_bytes=sizes[stem(path or "")]))

    with kvllama.Engine(cache=None, backend_factory=factory, max_memory=1000) as engine:
        for name in sizes:
            (tmp_path / f"{name}.gguf").write_bytes(b"x" * sizes[name])  # the estimate before a first load
            engine.register_model(name, str(tmp_path / f"{name}.gguf"))
        for name in ("mid", "small"):
            engine.touch_model(name)
        assert loaded(engine) == ["mid", "small"]  # 500 of 1000
        engine.touch_model("big")  # 600 more: "mid", the least recently used, goes
        assert loaded(engine) == ["big", "small"]
        engine.touch_model("small")
        engine.touch_model("mid")  # 300 more: "big" (now the least recently used) goes
        assert loaded(engine) == ["mid", "small"]
        assert {k.id: k.memory_bytes for k in engine.known_models()} == sizes


def test_a_sticky_session_goes_on_warm_and_exact_after_its_model_unloads(many):
    engine, _ = many(cache=RAM_ONLY)
    prompt = "s" * 150
    first = engine.complete("a", prompt, max_tokens=4, temperature=0, session_id="conv")
    engine.unload_model("a")  # parked sessions are saved to the cache as the loop stops
    turn2 = [*first.context_tokens, *engine.tokenize("a", " more", add_special=False)]
    resumed = engine.complete("a", turn2, max_tokens=4, temperature=0, session_id="conv")
    cold = engine.complete("a", turn2, max_tokens=4, temperature=0, cache_salt="cold")
    assert resumed.cache_delta.read >= len(prompt) - 8 and resumed.generated_tokens == cold.generated_tokens


def test_the_engines_keep_alive_unloads_an_idle_model_and_a_model_may_have_its_own(many, tmp_path):
    engine, _ = many(keep_alive="200ms")
    (tmp_path / "own.gguf").write_bytes(b"x")
    engine.register_model("own", str(tmp_path / "own.gguf"), keep_alive=-1)
    engine.complete("a", "hello", max_tokens=2)
    engine.complete("own", "hello", max_tokens=2)
    wait_until(lambda: loaded(engine) == ["own"])  # "a" went after 200 ms idle; "own" stays


def test_a_caller_that_leaves_while_its_model_loads_holds_nothing(many):
    import asyncio

    from kvllama.request import GenerationRequest

    engine, factory = many()
    factory.gate = threading.Event()

    async def leave_during_the_load() -> None:
        request = GenerationRequest.build("hello", max_tokens=2, session_id="s1")
        task = asyncio.ensure_future(engine.asubmit("a", request))
        await asyncio.to_thread(wait_until, lambda: any(k.loading for k in engine.known_models()))
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        factory.gate.set()  # the load finishes after the caller left
        released = lambda: loaded(engine) == ["a"] and engine.models.residency.in_use("a") == 0  # noqa: E731
        await asyncio.to_thread(wait_until, released)

    asyncio.run(leave_during_the_load())
    # The session the prepared request claimed is free again: a request of it runs.
    assert engine.complete("a", "hello", max_tokens=2, session_id="s1").generated_tokens
