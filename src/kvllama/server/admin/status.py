"""What ``GET /status`` reports: served models, slots, memory, KV cache tiers, recent requests.

Everything is read at request time from the engine's public snapshots
(:meth:`Engine.model_info`, :meth:`Engine.cache_metrics`) and from ``/proc``;
nothing here holds a lock the decode loop needs, so polling it every second
costs the loop nothing.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import kvllama
from kvllama.models.loaded import ModelInfo
from kvllama.server.state import ServerState

# Recent requests /status itself includes (GET /status/requests can return the whole ring).
STATUS_RECENT = 20


def collect(state: ServerState, recent: int = STATUS_RECENT) -> dict[str, Any]:
    now = time.time()
    body = {
        "object": "status",
        "version": kvllama.__version__,
        "started_at": state.started_at,
        "now": now,
        "uptime_seconds": round(now - state.started_at, 3),
        "auth": state.config.api_key is not None,
        "models": models_status(state),
        "memory": memory(),
        "cache": cache_status(state.engine.cache_metrics()),
        "requests_finished": state.metrics.recent.count,
        "recent_requests": state.metrics.recent.snapshot(recent),
    }
    # A replicated deployment (kvllama.ray) adds its replicas and the router's decisions.
    replica_status = getattr(state.engine, "replica_status", None)
    if replica_status is not None:
        body["scale_out"] = replica_status()
    return body


def models_status(state: ServerState) -> list[dict[str, Any]]:
    """Every served model: a loaded one in full, one that is not in memory (it loads on its next
    request) as what its GGUF header says; reading this never loads a model."""
    known, loaded = state.models_now()
    out = []
    for name, model_id in sorted(state.served().items()):
        info, entry = loaded.get(model_id), known.get(model_id)
        if info is not None:
            expires = entry.expires_in if entry is not None else None
            out.append({"name": name, "id": model_id, "loaded": True, "expires_in": expires,
                        **_info_fields(info)})
        elif entry is not None:
            phase = "loading" if entry.loading else "unloaded"
            out.append({"name": name, "id": model_id, "loaded": False, "healthy": True, "phase": phase,
                        "pending": 0, "in_flight": entry.in_use, "slots": slots(0, 0, 0, 0),
                        "last_cache_hit": None, "prompt_reuse": None, "path": entry.path,
                        "architecture": entry.architecture, "quant": entry.quant,
                        "memory_estimate_bytes": entry.memory_bytes})
        else:
            out.append({"name": name, "id": model_id, "loaded": False, "healthy": False,
                        "error": f"model {model_id!r} is not known to the engine"})
    return out


def _info_fields(info: ModelInfo) -> dict[str, Any]:
    n_seq_max = int(info.context.get("n_seq_max", 0))
    return {
        "healthy": info.healthy,
        "phase": info.phase,
        "pending": info.pending,
        "in_flight": info.in_flight,
        "slots": slots(n_seq_max, info.in_flight, info.sessions, info.kept),
        "last_cache_hit": dict(info.last_cache_hit),
        "prompt_reuse": info.prompt_reuse,
        "path": info.path,
        "description": info.description,
        "architecture": info.architecture,
        "quant": info.quant,
        "n_params": info.n_params,
        "n_ctx": info.context.get("n_ctx"),
        "n_ctx_seq": info.context.get("n_ctx_seq"),
        "loaded_at": info.loaded_at,
        # Weights plus the llama.cpp context's KV buffers (an upper bound for sliding-window models).
        "memory_estimate_bytes": info.memory_estimate_bytes,
        "chat_template_source": info.chat_template_source,
    }


def slots(n_seq_max: int, running: int, sessions: int, kept: int) -> dict[str, int]:
    """Sequence slots: ``free`` = total - running - parked sessions (kept sequences give way: free)."""
    return {
        "total": n_seq_max,
        "running": running,
        "sessions": sessions,
        "kept": kept,
        "free": max(0, n_seq_max - running - sessions),
    }


def cache_status(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """The KV cache's tiers (rows, bytes, budget) and its hit rate; ``enabled`` False without a cache."""
    if not metrics:
        return {"enabled": False, "tiers": {}, "lookups": 0, "hits": 0, "misses": 0, "hit_rate": None}
    hits = metrics.get("hits", {})
    n_hits = sum(hits.values()) if isinstance(hits, Mapping) else int(hits or 0)
    lookups = int(metrics.get("lookups", 0))
    tiers = {name: dict(t) for name, t in metrics.get("tiers", {}).items()}
    return {
        "enabled": True,
        "tiers": tiers,
        "bytes": sum(int(t.get("bytes", 0)) for t in tiers.values()),
        "rows": sum(int(t.get("rows", 0)) for t in tiers.values()),
        "lookups": lookups,
        "hits": n_hits,
        "hits_by_kind": dict(hits) if isinstance(hits, Mapping) else {},
        "hits_by_tier": dict(metrics.get("hits_by_tier", {})),
        "misses": int(metrics.get("misses", 0)),
        "hit_rate": round(n_hits / lookups, 4) if lookups else None,
        "saves": dict(metrics.get("saves", {})),
        "pending_saves": int(metrics.get("pending_saves", 0)),
    }


def memory() -> dict[str, Any]:
    """Process RSS and the host's memory (``/proc``); llama.cpp runs on the CPU, so the host is its device."""
    info = meminfo()
    total, available = info.get("MemTotal"), info.get("MemAvailable")
    return {
        "process_rss_bytes": process_rss(),
        "system_total_bytes": total,
        "system_available_bytes": available,
        "devices": [{"name": "host", "type": "cpu", "total_bytes": total, "free_bytes": available}],
    }


def meminfo(path: str = "/proc/meminfo") -> dict[str, int]:
    """``/proc/meminfo`` in bytes ({} where there is none)."""
    out: dict[str, int] = {}
    try:
        text = Path(path).read_text()
    except OSError:
        return out
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        fields = rest.split()
        if fields and fields[0].isdigit():
            scale = 1024 if len(fields) > 1 and fields[1] == "kB" else 1
            out[key.strip()] = int(fields[0]) * scale
    return out


def process_rss(path: str = "/proc/self/statm") -> int | None:
    """Resident set size of this process in bytes (None where ``/proc`` is missing)."""
    try:
        fields = Path(path).read_text().split()
        return int(fields[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None
