"""Which known models are in memory: loads on demand, keep-alive, and a budget of models and bytes.

The registry (api/models.py) knows every model it was told about; this
module decides which of them hold memory. A model is *in use* from
:meth:`Residency.acquire` to :meth:`Residency.release` (a request from
preparation to its end, a tokenize call for its duration) and is never
unloaded while in use. After its last use a model stays loaded for its
keep-alive (Ollama's ``keep_alive``: seconds, 0 unloads at once, negative
keeps it loaded), then a reaper thread unloads it. A load that would break
the budget (``max_loaded`` models, ``max_memory`` bytes) first unloads the
least recently used idle models; if every loaded model is in use it waits
for one to become idle, at most ``load_wait`` seconds (then
:class:`~kvllama.errors.ModelCapacityError`, a 503 with ``Retry-After``).

Fairness under a budget: once a load has waited ``switch_after`` seconds,
new uses of the other loaded models wait too, so their queues drain, the
waiting model gets its turn, and a switch back happens only after it has
been served as long. No queue waits for ever and no model pair thrashes
faster than one switch per ``switch_after``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from kvllama.errors import ModelCapacityError
from kvllama.models.loaded import LoadedModel

# Ollama's default keep-alive is five minutes; the Python API keeps models loaded.
FOREVER = -1.0


@dataclass(frozen=True)
class Budget:
    max_loaded: int | None = None
    max_memory: int | None = None
    # Seconds a load waits for a loaded model to become idle before it is refused.
    load_wait: float = 60.0
    # Seconds a waiting load lets the other models take new requests before they wait too.
    switch_after: float = 2.0
    # Seconds an idle model stays loaded after its last use (negative: for ever).
    keep_alive: float = FOREVER


@dataclass
class LoadState:
    """One known model's residency: loaded or not, its users, when it may go."""

    loaded: LoadedModel | None = None
    users: int = 0
    last_used: float = field(default_factory=time.monotonic)
    # time.monotonic() after which an idle model unloads (None: never).
    expires_at: float | None = None
    # A load in progress (its outcome goes to everyone who waited for it).
    loading: bool = False
    attempt: int = 0
    error: BaseException | None = None
    # Learned at the first load (weights + KV estimate); before it, the file's size.
    memory: int = 0


class Residency:
    def __init__(self, budget: Budget, lock: threading.Lock,
                 load: Callable[[str], LoadedModel], unload: Callable[[LoadedModel], None],
                 estimate: Callable[[str], int]) -> None:
        self.budget = budget
        self._changed = threading.Condition(lock)
        self._load, self._unload, self._estimate = load, unload, estimate
        self.states: dict[str, LoadState] = {}
        # model id -> when its load started waiting for room (fairness, see the module docstring).
        self._waiting_since: dict[str, float] = {}
        self._closed = False
        self._reaper = threading.Thread(target=self._reap, name="kvllama-keep-alive", daemon=True)
        self._reaper.start()

    # --- uses ---------------------------------------------------------------

    def acquire(self, model_id: str) -> LoadedModel:
        """The model, loaded if need be, marked in use (callers must :meth:`release` it)."""
        deadline = time.monotonic() + self.budget.load_wait
        with self._changed:
            while True:
                res = self.states.setdefault(model_id, LoadState())
                if res.loaded is not None and not self._yields(model_id):
                    res.users += 1
                    res.last_used = time.monotonic()
                    return res.loaded
                if res.loading:
                    self._wait_for_load(model_id, res, deadline)
                    continue
                if res.loaded is None:
                    victims = self._room_for(model_id)
                    if victims is not None:
                        res.loading, res.attempt, res.error = True, res.attempt + 1, None
                        self._waiting_since.pop(model_id, None)
                        break
                    self._waiting_since.setdefault(model_id, time.monotonic())
                self._wait(deadline, model_id)
        return self._load_now(model_id, res, victims)

    def release(self, model_id: str, keep_alive: float | None = None) -> None:
        """One use ended (any thread, the decode thread included: it never blocks on a load)."""
        with self._changed:
            res = self.states.get(model_id)
            if res is None:
                return
            res.users = max(0, res.users - 1)
            now = time.monotonic()
            res.last_used = now
            seconds = self.budget.keep_alive if keep_alive is None else keep_alive
            res.expires_at = None if seconds < 0 else now + seconds
            self._changed.notify_all()

    def evict(self, model_id: str) -> LoadedModel | None:
        """Take a model out of memory now (the caller unloads what is returned)."""
        with self._changed:
            res = self.states.get(model_id)
            if res is None or res.loaded is None:
                return None
            model, res.loaded, res.expires_at = res.loaded, None, None
            self._changed.notify_all()
            return model

    def describe(self, entry: Any) -> KnownModel:
        """A registry entry (api/models.py ModelEntry) with its residency now."""
        with self._changed:
            res = self.states.get(entry.id) or LoadState()
            loaded = res.loaded is not None
            until = res.expires_at
            left = None if not loaded or until is None else max(0.0, until - time.monotonic())
            return KnownModel(entry.id, entry.path, entry.architecture, entry.quant, entry.size_bytes, loaded,
                              res.loading, res.users, left, res.memory)

    def in_use(self, model_id: str) -> int:
        with self._changed:
            res = self.states.get(model_id)
            return res.users if res is not None else 0

    def close(self) -> None:
        with self._changed:
            self._closed = True
            self._changed.notify_all()
        self._reaper.join(5)

    # --- inside the lock ------------------------------------------------------

    def _yields(self, model_id: str) -> bool:
        """Should a new use of this loaded model wait, so that a long-waiting load gets its turn?"""
        now = time.monotonic()
        return any(other != model_id and now - since >= self.budget.switch_after
                   for other, since in self._waiting_since.items())

    def _room_for(self, model_id: str) -> list[LoadedModel] | None:
        """Idle models to unload so that ``model_id`` fits (LRU first); None while it cannot fit yet."""
        b = self.budget
        loaded = {k: r for k, r in self.states.items() if r.loaded is not None or r.loading}
        need = self.states[model_id].memory or self._estimate(model_id)
        count, memory = len(loaded), sum(r.memory for r in loaded.values())
        idle = sorted((r.last_used, k) for k, r in loaded.items() if r.users == 0 and r.loaded is not None)
        victims: list[str] = []
        while ((b.max_loaded is not None and count + 1 > b.max_loaded)
               or (b.max_memory is not None and memory + need > b.max_memory and count > 0)):
            if not idle:
                return None
            _, victim = idle.pop(0)
            victims.append(victim)
            count, memory = count - 1, memory - loaded[victim].memory
        out = []
        for victim in victims:
            res = self.states[victim]
            assert res.loaded is not None
            out.append(res.loaded)
            res.loaded, res.expires_at = None, None
        return out

    def _wait(self, deadline: float, model_id: str) -> None:
        left = deadline - time.monotonic()
        if left <= 0 or self._closed:
            self._waiting_since.pop(model_id, None)
            raise ModelCapacityError(model_id, self.budget.load_wait)
        self._changed.wait(min(left, 0.5))

    def _wait_for_load(self, model_id: str, res: LoadState, deadline: float) -> None:
        attempt = res.attempt
        while res.loading and res.attempt == attempt:
            left = deadline - time.monotonic()
            if left <= 0:
                raise ModelCapacityError(model_id, self.budget.load_wait)
            self._changed.wait(min(left, 0.5))
        if res.attempt == attempt and res.error is not None:
            raise res.error

    # --- outside the lock -------------------------------------------------------

    def _load_now(self, model_id: str, res: LoadState, victims: list[LoadedModel]) -> LoadedModel:
        for victim in victims:
            self._unload(victim)
        try:
            model = self._load(model_id)
        except BaseException as exc:
            with self._changed:
                res.loading, res.error = False, exc
                self._changed.notify_all()
            raise
        with self._changed:
            res.loaded, res.loading, res.users = model, False, res.users + 1
            res.last_used = time.monotonic()
            res.memory = model.info().memory_estimate_bytes
            self._changed.notify_all()
        return model

    def _reap(self) -> None:
        """Unload idle models whose keep-alive ran out (this thread, never the decode thread)."""
        while True:
            with self._changed:
                if self._closed:
                    return
                now = time.monotonic()
                expired = [k for k, r in self.states.items() if r.loaded is not None and r.users == 0
                           and r.expires_at is not None and r.expires_at <= now]
                models = []
                for k in expired:
                    res = self.states[k]
                    models.append(res.loaded)
                    res.loaded, res.expires_at = None, None
                if not models:
                    nexts = [r.expires_at for r in self.states.values()
                             if r.loaded is not None and r.expires_at is not None]
                    self._changed.wait(max(0.01, min(nexts) - now) if nexts else None)
                    continue
                self._changed.notify_all()
            for model in models:
                if model is not None:
                    self._unload(model)


@dataclass(frozen=True)
class KnownModel:
    """A model the engine can serve, loaded or not (``Engine.known_models``)."""

    id: str
    path: str | None
    architecture: str
    quant: str
    # The GGUF file's size.
    size_bytes: int
    loaded: bool
    # A load is under way (requests for it wait).
    loading: bool
    in_use: int
    # Seconds until an idle loaded model unloads (None: never, or not loaded).
    expires_in: float | None
    # Bytes it takes (weights + KV estimate) once loaded; before the first load, 0.
    memory_bytes: int


