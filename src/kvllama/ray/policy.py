"""Which replica serves a request: sticky, then cache affinity, then load. No Ray in here.

The policy sees each replica through the :class:`~kvllama.api.probes.RoutingSnapshot`
it last reported (the engine's own digest of the prefixes it holds, its
parked sessions, its queue) plus what this router sent it since, and ranks
the candidates for one request:

1. **sticky**: a request with a ``session_id`` goes where that session lives
   (the replica's report names it; else where this router last sent it);
2. **affinity**: else the replica that spares the most prefill: the cost of
   a replica is the prompt tokens it would have to compute, plus
   ``slot_cost_tokens`` per request it already runs (a request that finds a
   free sequence slot is batched with the others: it slows them a little),
   plus ``queue_cost_tokens`` if it would have to wait for a slot. The
   longest cached prefix wins unless its replica is full;
3. **load**: when no replica spares at least ``min_gain_tokens`` more than
   the least-spared one, affinity gains too little, and the least busy
   replica takes it (random among equals, so cold prompts spread out).

The first choice is tried alone for ``fallback_after_seconds``
(:meth:`AffinityPolicy.tiers`). Ray asks a replica for its queue length
before it sends it a request and gives up on the answer after 100 ms; a
replica whose event loop is busy for a moment (a long prompt tokenized, two
cores shared by two engines) misses that, and Ray would at once hand the
request to the next replica in the ranking: a conversation would leave the
replica that holds it, and cold prompts would all pile onto whichever
replica answered. Ray retries with doubling deadlines, so waiting a little
for the replica the policy chose is what keeps a conversation home; past
the window the rest of the ranking is the fallback (a replica that is
really stuck or full).

"What this router sent it since" matters because a replica reports every
second or so: a prompt routed a moment ago is being prefilled there, and the
next turn of that conversation must follow it even before the next report.
Those routed prefixes are an overlay that expires after ``memory_seconds``;
the replicas' reports stay the ground truth (an evicted row drops out of the
next report).

Prompts are compared by chain values of 64-token blocks (kvcache/keys.py)
under the replica's key root and the request's cache salt, so tenants never
match each other's rows. A request that names its own LoRA adapters is
routed by session and load only: its rows sit under another root.
"""

from __future__ import annotations

import enum
import random
import time
from collections import OrderedDict, deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

from kvllama.api.probes import RoutingSnapshot
from kvllama.kvcache.keys import KeyChain, KeyRoot

# The KV cache's key block (CacheConfig.block_size): prefixes are compared in whole blocks.
BLOCK = 64
DEFAULT_MIN_GAIN_TOKENS = 64
DEFAULT_SLOT_COST_TOKENS = 16
DEFAULT_QUEUE_COST_TOKENS = 512
DEFAULT_MEMORY_SECONDS = 60.0
DEFAULT_FALLBACK_AFTER_SECONDS = 5.0
# Sessions and routed prefixes this router remembers (LRU bounds).
MAX_REMEMBERED_SESSIONS = 65_536
MAX_REMEMBERED_BLOCKS = 262_144
MAX_REMEMBERED_COMPLETIONS = 4096


class RouteKind(enum.StrEnum):
    STICKY = "sticky"
    AFFINITY = "affinity"
    LOAD = "load"


@dataclass(frozen=True)
class RouteInfo:
    """What the ingress tells the router about one call (the first argument of every replica call)."""

    model_id: str
    tokens: tuple[int, ...] = ()
    cache_salt: str | None = None
    session_id: str | None = None
    # A fork's new session, which lives where ``session_id`` lives.
    new_session_id: str | None = None
    # The request names its own LoRA set: its rows are under another root (module docstring).
    own_adapters: bool = False
    # The ingress's id for the call, so the decision can be reported back.
    route_id: str = ""


@dataclass(frozen=True)
class Decision:
    replica: str
    kind: RouteKind
    # Prompt tokens the chosen replica is expected to spare (whole blocks).
    matched_tokens: int


@dataclass
class _Replica:
    snapshots: dict[str, RoutingSnapshot] = field(default_factory=dict)
    # Chain value -> when this router sent a prompt with that block here.
    routed: OrderedDict[bytes, float] = field(default_factory=OrderedDict)
    # Requests this router sent here that have not completed, by request id.
    running: set[str] = field(default_factory=set)
    # When (time.time()) each of the latest requests completed: a report taken before them
    # still counts them as load.
    completions: deque[float] = field(default_factory=lambda: deque(maxlen=MAX_REMEMBERED_COMPLETIONS))


class AffinityPolicy:
    def __init__(
        self,
        *,
        min_gain_tokens: int = DEFAULT_MIN_GAIN_TOKENS,
        slot_cost_tokens: int = DEFAULT_SLOT_COST_TOKENS,
        queue_cost_tokens: int = DEFAULT_QUEUE_COST_TOKENS,
        memory_seconds: float = DEFAULT_MEMORY_SECONDS,
        fallback_after_seconds: float = DEFAULT_FALLBACK_AFTER_SECONDS,
        rng: random.Random | None = None,
    ) -> None:
        self.min_gain_tokens = min_gain_tokens
        self.slot_cost_tokens = slot_cost_tokens
        self.queue_cost_tokens = queue_cost_tokens
        self.memory_seconds = memory_seconds
        self.fallback_after_seconds = fallback_after_seconds
        self._rng = rng or random.Random()
        self._replicas: dict[str, _Replica] = {}
        self._sessions: OrderedDict[tuple[str, str | None, str], str] = OrderedDict()
        # Requests whose completion was reported before their routing (a fast reply, or one
        # the replica refused): their routing must not count them as running.
        self._finished_early: OrderedDict[str, None] = OrderedDict()

    # --- what the replicas and the router tell us --------------------------------

    def report(self, replica: str, snapshots: Sequence[RoutingSnapshot]) -> None:
        """A replica's latest routing stats (one snapshot per model it serves)."""
        state = self._replicas.setdefault(replica, _Replica())
        state.snapshots = {s.model_id: s for s in snapshots}

    def forget(self, replica: str) -> None:
        """A replica went away: nothing routes to what it held."""
        self._replicas.pop(replica, None)
        for key in [k for k, r in self._sessions.items() if r == replica]:
            del self._sessions[key]

    def routed(self, info: RouteInfo, replica: str, request_id: str) -> None:
        """``info`` was sent to ``replica``: its prompt and session will be there."""
        state = self._replicas.setdefault(replica, _Replica())
        if self._finished_early.pop(request_id, False) is False:
            state.running.add(request_id)
        for session in (info.session_id, info.new_session_id):
            if session is None:
                continue
            key = (info.model_id, info.cache_salt, session)
            self._sessions[key] = replica
            self._sessions.move_to_end(key)
        while len(self._sessions) > MAX_REMEMBERED_SESSIONS:
            self._sessions.popitem(last=False)
        now = time.monotonic()
        for value in _own_chain(info):
            state.routed[value] = now
            state.routed.move_to_end(value)
        while len(state.routed) > MAX_REMEMBERED_BLOCKS:
            state.routed.popitem(last=False)

    def completed(self, replica: str, request_id: str) -> None:
        """A request sent to ``replica`` completed (Ray may say so before it says it was routed)."""
        state = self._replicas.setdefault(replica, _Replica())
        state.completions.append(time.time())
        if request_id in state.running:
            state.running.discard(request_id)
            return
        self._finished_early[request_id] = None
        while len(self._finished_early) > MAX_REMEMBERED_COMPLETIONS:
            self._finished_early.popitem(last=False)

    # --- the decision -----------------------------------------------------------

    def rank(self, info: RouteInfo, candidates: Sequence[str],
             planned: Mapping[str, int] | None = None) -> list[Decision]:
        """``candidates`` best first, each with the kind of reason that put it there.

        ``planned``: requests per replica that were ranked but not yet sent
        (the router ranks concurrent requests before Ray reports where any
        of them went); they count as load, so a burst of cold prompts
        spreads instead of all taking the same least-loaded replica.
        """
        if not candidates:
            return []
        planned = planned or {}
        sticky = self._session_home(info, candidates)
        matched = {c: self.matched_tokens(info, c) for c in candidates}
        floor = min(matched.values())
        costs = {c: self._cost(info, c, matched[c], planned.get(c, 0)) for c in candidates}
        shuffled = list(candidates)
        self._rng.shuffle(shuffled)  # random among equals
        order = sorted(shuffled, key=lambda c: costs[c])
        decisions = []
        for c in order:
            kind = RouteKind.AFFINITY if matched[c] - floor >= self.min_gain_tokens else RouteKind.LOAD
            decisions.append(Decision(c, kind, matched[c]))
        if sticky is not None:
            decisions = [Decision(sticky, RouteKind.STICKY, matched[sticky])] + [
                d for d in decisions if d.replica != sticky]
        return decisions

    def tiers(self, ranked: Sequence[Decision], waited_seconds: float) -> list[list[str]]:
        """What Ray may try for a request ranked ``ranked``, ``waited_seconds`` after it arrived.

        The first choice alone until ``fallback_after_seconds``, then the
        rest of the ranking behind it (module docstring).
        """
        if not ranked:
            return []
        first = [ranked[0].replica]
        if waited_seconds < self.fallback_after_seconds or len(ranked) == 1:
            return [first]
        return [first, [d.replica for d in ranked[1:]]]

    def matched_tokens(self, info: RouteInfo, replica: str) -> int:
        """Leading prompt tokens (whole blocks) the replica holds or was recently sent."""
        state = self._replicas.get(replica)
        if state is None or not info.tokens or info.own_adapters:
            return 0
        reported = 0
        snap = state.snapshots.get(info.model_id)
        if snap is not None and snap.root is not None:
            for value in self._chain(info, state):
                if value not in snap.blocks:
                    break
                reported += snap.block_size
        horizon = time.monotonic() - self.memory_seconds
        routed = 0
        for value in _own_chain(info):
            when = state.routed.get(value)
            if when is None or when < horizon:
                break
            routed += BLOCK
        # At least one token is always computed: a whole-prompt match spares one block less.
        return min(max(reported, routed), (len(info.tokens) - 1) // BLOCK * BLOCK)

    def _cost(self, info: RouteInfo, replica: str, matched: int, planned: int) -> float:
        state = self._replicas.get(replica)
        busy = len(state.running) if state is not None else 0
        snap = state.snapshots.get(info.model_id) if state is not None else None
        slots = 1
        if state is not None and snap is not None:
            # The report may count requests that completed since it was taken (and requests
            # other routers sent, which only the report knows).
            since = sum(1 for t in state.completions if t > snap.taken_at)
            busy = max(busy, snap.load - since)
            slots = max(1, snap.n_seq_max - len(snap.sessions))
        busy += planned
        waits = busy + 1 > slots
        return (len(info.tokens) - matched) + self.slot_cost_tokens * busy + self.queue_cost_tokens * waits

    def _session_home(self, info: RouteInfo, candidates: Sequence[str]) -> str | None:
        if info.session_id is None:
            return None
        key = (info.cache_salt, info.session_id)
        for c in candidates:  # a replica's own report wins over our memory
            snap = self._replicas.get(c, _Replica()).snapshots.get(info.model_id)
            if snap is not None and key in snap.sessions:
                return c
        home = self._sessions.get((info.model_id, info.cache_salt, info.session_id))
        return home if home in candidates else None

    def _chain(self, info: RouteInfo, state: _Replica) -> list[bytes]:
        snap = state.snapshots.get(info.model_id)
        if snap is None or snap.root is None or not info.tokens or info.own_adapters:
            return []
        root = _salted(snap.root, info.cache_salt)
        return KeyChain(root.digest, info.tokens, snap.block_size).block_values(
            len(info.tokens) // snap.block_size)

    # --- for /metrics and /status ------------------------------------------------

    def replicas(self) -> dict[str, dict[str, RoutingSnapshot]]:
        return {r: dict(s.snapshots) for r, s in list(self._replicas.items())}

    def in_flight(self, replica: str) -> int:
        state = self._replicas.get(replica)
        return len(state.running) if state is not None else 0


def _own_chain(info: RouteInfo) -> list[bytes]:
    """Chain values of the prompt's blocks under a root of the router's own (model, tenant).

    What this router sent where is remembered under these, so it works before
    a replica's first report (whose key root the replicas' values need).
    """
    if not info.tokens or info.own_adapters:
        return []
    root = KeyRoot(model_fingerprint=f"router:{info.model_id}", type_k="", type_v="", flash_attn="",
                   kv_unified=False, n_seq_max=0, state_version="", cache_salt=info.cache_salt)
    return KeyChain(root.digest, info.tokens, BLOCK).block_values(len(info.tokens) // BLOCK)


def _salted(root: KeyRoot, salt: str | None) -> KeyRoot:
    return root if root.cache_salt == salt else replace(root, cache_salt=salt)
