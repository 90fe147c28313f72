"""``kvllama bench cache``: what the KV cache saves, measured as time to first token.

Three parts, in one process, on temporary tier directories (shm under
/dev/shm, disk under $TMPDIR):

(a) *prefix*: for each prefix length, a cold request (prefix + suffix A)
    and then a warm one (same prefix + a different suffix B), in three
    engines whose cache has exactly one tier (RAM, shm or disk). The warm
    request restores the prefix row the cold one saved and prefills only its
    suffix, so cold/warm is what a shared prefix is worth from that tier.
(b) *agents*: N agents share a system prompt and run T turns each, all at
    once, every turn resuming from the previous one's ``finish_key``; the
    same workload with the cache on (system prompt warmed once with
    ``prefill_only``) and off.
(c) *restart*: a fresh engine on part (a)'s disk directory (an empty RAM
    tier, rows adopted from the files) serves each prefix with a third
    suffix; its first-turn TTFT against part (a)'s RAM-warm TTFT.

Each figure is a median over runs; with ``repeat`` > 1 the order of tiers
and of cache on/off alternates between runs, because this machine's speed
drifts by tens of percent over a minute. Finished requests are not kept in
their slots (``keep_finished=False``), so every warm figure is the cache's.
TTFT is ``stats.time_to_first_token``
(from submission to the first sampled token: restore + prefill + one sample).
"""

from __future__ import annotations

import math
import os
import shutil
import statistics
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kvllama.api.engine import Engine
from kvllama.errors import InvalidOptionError
from kvllama.kvcache import CacheConfig
from kvllama.models.factory import BackendFactory
from kvllama.results import CompletionResult

MODEL = "bench"
SUFFIX_TOKENS = 16  # >= the engine's min_tail (8): the warm request prefills only this
ALIGN = 64  # prompt rows are saved on multiples of this (SavePolicy.boundary)
MIN_PREFIX = 128  # SavePolicy.min_tokens: shorter prompts are not saved after prefill
TIERS = ("ram", "shm", "disk")
_WORDS = (
    "river", "stone", "lantern", "harbor", "meadow", "quartz", "violet", "engine", "ledger",
    "orchard", "signal", "canyon", "mirror", "falcon", "pepper", "thunder", "garden", "silver",
    "anchor", "marble", "compass", "velvet", "ember", "glacier",
)
Progress = Callable[[str], None]


@dataclass(frozen=True)
class _Dirs:
    shm: Path  # under /dev/shm where it exists, so the shm tier is memory-backed
    disk: Path  # under $TMPDIR, a real disk here

    @classmethod
    def create(cls) -> _Dirs:
        shm_base = "/dev/shm" if os.path.isdir("/dev/shm") else None
        return cls(Path(tempfile.mkdtemp(prefix="kvllama-bench-", dir=shm_base)),
                   Path(tempfile.mkdtemp(prefix="kvllama-bench-")))

    def remove(self) -> None:
        shutil.rmtree(self.shm, ignore_errors=True)
        shutil.rmtree(self.disk, ignore_errors=True)


def run_bench_cache(
    model_path: str | None,
    options: dict[str, Any] | None = None,
    *,
    sizes: Sequence[int] = (512, 1024, 2048, 4096),
    repeat: int = 1,
    agents: int = 4,
    turns: int = 4,
    system_tokens: int = 1000,
    agent_max_tokens: int = 32,
    backend_factory: BackendFactory | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Run parts (a), (b) and (c); a JSON-ready report (rendered by ``cache_report.format_report``)."""
    sizes = sorted(set(sizes))
    if not sizes or any(s % ALIGN or s < MIN_PREFIX for s in sizes):
        raise InvalidOptionError("sizes", sizes, f"multiples of {ALIGN}, at least {MIN_PREFIX}")
    for name, value in (("repeat", repeat), ("agents", agents), ("turns", turns),
                        ("system_tokens", system_tokens), ("max_tokens", agent_max_tokens)):
        if value < 1:
            raise InvalidOptionError(name, value, "at least 1")
    say = progress or (lambda _line: None)
    base = {k: v for k, v in (options or {}).items() if k not in ("n_ctx", "n_seq_max")}
    # This bench measures the cache's tiers: a finished request kept in its slot
    # (decoding/kept.py) would serve the warm requests instead.
    base["keep_finished"] = False

    def make(cache: CacheConfig | None, n_seq_max: int, n_ctx_seq: int) -> Engine:
        engine = Engine(cache=cache, backend_factory=backend_factory)
        try:
            engine.load_model(MODEL, model_path, **base, n_seq_max=n_seq_max, n_ctx=n_seq_max * n_ctx_seq)
        except BaseException:
            engine.close()
            raise
        return engine

    dirs = _Dirs.create()
    try:
        prefix, disk_prompts, model = _prefix_part(make, dirs, sizes, repeat, say)
        agents_report = _agents_part(make, dirs, agents, turns, system_tokens, agent_max_tokens, repeat, say)
        restart = _restart_part(make, dirs, sizes, disk_prompts, prefix, say)
    finally:
        dirs.remove()
    return {
        "benchmark": "cache", "model": model, "sizes": sizes, "repeat": repeat,
        "suffix_tokens": SUFFIX_TOKENS, "prefix": prefix, "agents": agents_report, "restart": restart,
    }


# --- helpers ---------------------------------------------------------------------


def _text_tokens(engine: Engine, header: str, n: int, *, add_special: bool = True) -> list[int]:
    """Exactly ``n`` tokens of reproducible filler text, distinct per header."""
    seed = sum(header.encode())
    words = " ".join(_WORDS[(seed + j * 3 + j * j) % len(_WORDS)] for j in range(n))
    ids = engine.tokenize(MODEL, header + words, add_special=add_special)
    return ids[:n]


def _first_token(engine: Engine, prompt: list[int], **params: Any) -> CompletionResult:
    return engine.complete(MODEL, prompt, max_tokens=1, temperature=0, **params)


def _settle(engine: Engine, timeout: float = 60.0) -> None:
    """Wait for the writer pool: the next request must find the rows, and not share the CPU with saves."""
    deadline = time.monotonic() + timeout
    while engine.cache is not None and engine.cache.pending_keys() and time.monotonic() < deadline:
        time.sleep(0.005)


def _ctx_for(tokens: int) -> int:
    """A per-sequence context that holds ``tokens``, rounded up to 1024 cells."""
    return math.ceil(tokens / 1024) * 1024


def _p90(values: Sequence[float]) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(0.9 * len(ordered)) - 1)]


def _rotated(items: Sequence[str], by: int) -> list[str]:
    by %= len(items)
    return [*items[by:], *items[:by]]


# --- (a) cold vs warm per tier ---------------------------------------------------


def _prefix_part(
    make: Callable[..., Engine], dirs: _Dirs, sizes: list[int], repeat: int, say: Progress,
) -> tuple[list[dict[str, Any]], list[tuple[int, list[int]]], str]:
    configs = {
        "ram": CacheConfig(shm_dir=None, disk_dir=None),
        "shm": CacheConfig(ram_bytes=0, shm_dir=dirs.shm / "a-shm", disk_dir=None),
        "disk": CacheConfig(ram_bytes=0, shm_dir=None, disk_dir=dirs.disk / "disk"),
    }
    n_ctx_seq = max(8192, _ctx_for(max(sizes) + SUFFIX_TOKENS + 64))
    engines: dict[str, Engine] = {}
    cold: dict[int, list[float]] = {s: [] for s in sizes}
    warm: dict[int, dict[str, list[float]]] = {s: {t: [] for t in TIERS} for s in sizes}
    restored: dict[int, dict[str, int]] = {s: {} for s in sizes}
    disk_prompts: list[tuple[int, list[int]]] = []
    try:
        for tier in TIERS:
            engines[tier] = make(configs[tier], 2, n_ctx_seq)
            engines[tier].complete(MODEL, "Warm up.", max_tokens=2, temperature=0)  # one-off allocations
        model = engines["ram"].model_info(MODEL).path
        any_engine = engines["ram"]
        suffix_a = _text_tokens(any_engine, "\nQuestion A: ", SUFFIX_TOKENS, add_special=False)
        suffix_b = _text_tokens(any_engine, "\nQuery B, please: ", SUFFIX_TOKENS, add_special=False)
        for rep in range(repeat):
            for size in sizes:
                for tier in _rotated(TIERS, rep):
                    engine = engines[tier]
                    prefix = _text_tokens(engine, f"Document {tier} {size} {rep}: ", size)
                    c = _first_token(engine, prefix + suffix_a)
                    _settle(engine)
                    w = _first_token(engine, prefix + suffix_b)
                    _settle(engine)
                    cold[size].append(c.stats.time_to_first_token or 0.0)
                    warm[size][tier].append(w.stats.time_to_first_token or 0.0)
                    restored[size][tier] = min(restored[size].get(tier, size), w.cache_delta.read)
                    if tier == "disk":
                        disk_prompts.append((size, prefix))
                    say(f"[prefix] {size} tokens, {tier}: cold {cold[size][-1]:.3f} s, "
                        f"warm {warm[size][tier][-1]:.3f} s (restored {w.cache_delta.read} tokens)")
    finally:
        for engine in engines.values():
            engine.close()
    rows = []
    for size in sizes:
        cold_s = statistics.median(cold[size])
        warm_s = {t: statistics.median(warm[size][t]) for t in TIERS}
        rows.append({
            "prefix_tokens": size,
            "cold_ttft": round(cold_s, 4),
            "warm_ttft": {t: round(v, 4) for t, v in warm_s.items()},
            "speedup": {t: round(cold_s / v, 2) if v else None for t, v in warm_s.items()},
            "restored_tokens": restored[size],
            "cold_runs": [round(v, 4) for v in cold[size]],
            "warm_runs": {t: [round(v, 4) for v in warm[size][t]] for t in TIERS},
        })
    return rows, disk_prompts, model


# --- (b) agents sharing a system prompt ------------------------------------------


def _agents_part(
    make: Callable[..., Engine], dirs: _Dirs, agents: int, turns: int, system_tokens: int,
    max_tokens: int, repeat: int, say: Progress,
) -> dict[str, Any]:
    n_ctx_seq = _ctx_for(system_tokens + turns * (64 + max_tokens) + 64)
    runs: dict[str, list[dict[str, Any]]] = {"on": [], "off": []}
    engines: dict[str, Engine] = {}
    try:
        engines["on"] = make(CacheConfig(shm_dir=dirs.shm / "b-shm", disk_dir=None), agents, n_ctx_seq)
        engines["off"] = make(None, agents, n_ctx_seq)
        for engine in engines.values():
            engine.complete(MODEL, "Warm up.", max_tokens=2, temperature=0)
        for rep in range(repeat):
            system = _text_tokens(engines["on"], f"System prompt {rep}. You are a careful agent. ",
                                  system_tokens)
            for mode in ("on", "off") if rep % 2 == 0 else ("off", "on"):
                run = _agents_run(engines[mode], system, agents, turns, max_tokens, prewarm=mode == "on")
                runs[mode].append(run)
                say(f"[agents] cache {mode}: TTFT mean {statistics.mean(run['ttfts']):.3f} s, "
                    f"wall {run['wall_seconds']:.1f} s")
    finally:
        for engine in engines.values():
            engine.close()
    out: dict[str, Any] = {"agents": agents, "turns": turns, "system_tokens": system_tokens,
                           "max_tokens": max_tokens}
    for mode, mode_runs in runs.items():
        out[mode] = _agents_summary(mode_runs)
    out["ratio_mean"] = round(out["off"]["ttft_mean"] / out["on"]["ttft_mean"], 2)
    out["ratio_p90"] = round(out["off"]["ttft_p90"] / out["on"]["ttft_p90"], 2)
    return out


def _agents_run(
    engine: Engine, system: list[int], agents: int, turns: int, max_tokens: int, *, prewarm: bool,
) -> dict[str, Any]:
    """Every agent in its own thread, its turns in order; each turn resumes from the previous finish_key."""
    prewarm_seconds = None
    if prewarm:
        started = time.perf_counter()
        engine.prefill_only(MODEL, system)
        _settle(engine)
        prewarm_seconds = time.perf_counter() - started
    results: list[list[CompletionResult]] = [[] for _ in range(agents)]
    errors: list[BaseException] = []

    def agent(i: int) -> None:
        history, parent = list(system), None
        try:
            for t in range(turns):
                message = engine.tokenize(
                    MODEL, f"\nUser: agent {i}, turn {t}: summarise the {_WORDS[(i * 5 + t) % len(_WORDS)]}"
                    f" notes in one short line.\nAssistant:", add_special=False)
                r = engine.complete(MODEL, history + message, max_tokens=max_tokens, temperature=0,
                                    parent_key=parent)
                results[i].append(r)
                history, parent = list(r.context_tokens), r.finish_key
        except BaseException as exc:  # re-raised in the caller's thread
            errors.append(exc)

    started = time.perf_counter()
    threads = [threading.Thread(target=agent, args=(i,), name=f"bench-agent-{i}") for i in range(agents)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    if errors:
        raise errors[0]
    flat = [(t, r) for per in results for t, r in enumerate(per)]
    return {
        "ttfts": [r.stats.time_to_first_token or 0.0 for _, r in flat],
        "first_turn": [r.stats.time_to_first_token or 0.0 for t, r in flat if t == 0],
        "later_turns": [r.stats.time_to_first_token or 0.0 for t, r in flat if t > 0],
        "prompt_tokens": sum(r.stats.prompt_tokens for _, r in flat),
        "cached_tokens": sum(r.cache_delta.read for _, r in flat),
        "hit_kinds": dict(Counter(r.cache_hit_kind for _, r in flat)),
        "prewarm_seconds": prewarm_seconds,
        "wall_seconds": time.perf_counter() - started,
    }


def _agents_summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    ttfts = [v for run in runs for v in run["ttfts"]]
    later = [v for run in runs for v in run["later_turns"]]
    prewarm = [run["prewarm_seconds"] for run in runs if run["prewarm_seconds"] is not None]
    kinds: Counter[str] = Counter()
    for run in runs:
        kinds.update(run["hit_kinds"])
    return {
        "requests": len(ttfts),
        "ttft_mean": round(statistics.mean(ttfts), 4),
        "ttft_p90": round(_p90(ttfts), 4),
        "first_turn_mean": round(statistics.mean(v for run in runs for v in run["first_turn"]), 4),
        "later_turns_mean": round(statistics.mean(later), 4) if later else None,
        "cached_prompt_fraction": round(sum(r["cached_tokens"] for r in runs)
                                        / max(1, sum(r["prompt_tokens"] for r in runs)), 3),
        "hit_kinds": dict(kinds),
        "prewarm_seconds": round(statistics.median(prewarm), 4) if prewarm else None,
        "wall_seconds": round(statistics.median(run["wall_seconds"] for run in runs), 3),
    }


# --- (c) restart from the disk tier ----------------------------------------------


def _restart_part(
    make: Callable[..., Engine], dirs: _Dirs, sizes: list[int], disk_prompts: list[tuple[int, list[int]]],
    prefix: list[dict[str, Any]], say: Progress,
) -> dict[str, Any]:
    """A fresh engine (empty RAM, rows adopted from part (a)'s disk files): first turn per prefix."""
    started = time.perf_counter()
    engine = make(CacheConfig(shm_dir=None, disk_dir=dirs.disk / "disk"), 2,
                  max(8192, _ctx_for(max(sizes) + SUFFIX_TOKENS + 64)))
    start_seconds = time.perf_counter() - started
    ttfts: dict[int, list[float]] = {s: [] for s in sizes}
    restored: dict[int, int] = {}
    try:
        assert engine.cache is not None
        adopted = len(engine.cache.rows())
        engine.complete(MODEL, "Warm up.", max_tokens=2, temperature=0)
        suffix_c = _text_tokens(engine, "\nThird question C: ", SUFFIX_TOKENS, add_special=False)
        for size, tokens in disk_prompts:
            r = _first_token(engine, tokens + suffix_c)
            _settle(engine)
            ttfts[size].append(r.stats.time_to_first_token or 0.0)
            restored[size] = min(restored.get(size, size), r.cache_delta.read)
            say(f"[restart] {size} tokens: first turn {ttfts[size][-1]:.3f} s "
                f"(restored {r.cache_delta.read} tokens from disk)")
    finally:
        engine.close()
    by_size = {row["prefix_tokens"]: row for row in prefix}
    rows = []
    for size in sizes:
        restart_s = statistics.median(ttfts[size])
        ram_s, cold_s = by_size[size]["warm_ttft"]["ram"], by_size[size]["cold_ttft"]
        rows.append({
            "prefix_tokens": size, "cold_ttft": cold_s, "ram_warm_ttft": ram_s,
            "restart_ttft": round(restart_s, 4),
            "restart_vs_ram": round(restart_s / ram_s, 2) if ram_s else None,
            "speedup_vs_cold": round(cold_s / restart_s, 2) if restart_s else None,
            "restored_tokens": restored.get(size, 0),
        })
    return {"start_seconds": round(start_seconds, 3), "rows_adopted": adopted, "rows": rows}
