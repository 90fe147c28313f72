"""``kvllama bench throughput``: the engine against a bare llama_decode loop.

For each concurrency the same work runs twice in one process, on the same
llama.cpp context: once through the engine (scheduler, events, streams,
consumer threads), and once as the floor — a bare loop that replays exactly
the llama.cpp calls the engine made (every batch, sequence move and clear) and
samples every logits row with the same kind of sampler chain, with no
scheduler, no events and no Python streams in between. The batch shapes are
therefore identical by construction, and engine/floor is the engine's own
overhead.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from kvllama.api.engine import Engine
from kvllama.backend.protocol import Row
from kvllama.engine.params import SamplingParams
from kvllama.events import TokenEvent

_WORDS = (
    "river", "stone", "lantern", "harbor", "meadow", "quartz", "violet", "engine", "ledger",
    "orchard", "signal", "canyon", "mirror", "falcon", "pepper", "thunder", "garden", "silver",
    "anchor", "marble", "compass", "velvet", "ember", "glacier",
)


@dataclass(frozen=True)
class ThroughputRow:
    streams: int
    engine_tokens_per_second: float
    floor_tokens_per_second: float
    ratio: float
    itl_p50_ms: float
    itl_p95_ms: float
    generated_tokens: int


def make_prompts(engine: Engine, model_id: str, n: int, tokens: int) -> list[list[int]]:
    """Distinct prompts of exactly ``tokens`` tokens (BOS + words), reproducible."""
    prompts = []
    for i in range(n):
        words = [_WORDS[(i * 7 + j * 3 + j * j) % len(_WORDS)] for j in range(tokens * 2)]
        ids = engine.tokenize(model_id, f"Report {i}: " + " ".join(words))
        prompts.append(ids[:tokens])
    return prompts


def _engine_run(
    engine: Engine, model_id: str, prompts: Sequence[list[int]], params: dict
) -> tuple[float, int, list[float]]:
    """All streams at once, one consumer thread each so token times are arrival times."""
    started = time.perf_counter()
    streams = [engine.infer(model_id, p, **params) for p in prompts]
    gaps: list[list[float]] = [[] for _ in streams]
    counts = [0] * len(streams)
    errors: list[BaseException] = []

    def consume(i: int) -> None:
        last = None
        for event in streams[i]:
            now = time.perf_counter()
            if isinstance(event, TokenEvent):
                counts[i] += 1
                if last is not None:
                    gaps[i].append(now - last)
                last = now
            elif event.type == "error":
                errors.append(event.error)

    threads = [threading.Thread(target=consume, args=(i,)) for i in range(len(streams))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return time.perf_counter() - started, sum(counts), [g for per in gaps for g in per]


class _Recorder:
    """Stands in for the backend during the engine run and records the llama.cpp work it asks for."""

    def __init__(self, backend: Any) -> None:
        self._backend = backend
        self.ops: list[tuple[Any, ...]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._backend, name)

    def decode(self, rows: Sequence[Row]) -> None:
        self.ops.append(("decode", list(rows)))
        self._backend.decode(rows)

    def move_sequence(self, src: int, dst: int) -> None:
        self.ops.append(("move", src, dst))
        self._backend.move_sequence(src, dst)

    def clear_sequence(self, seq_id: int, from_pos: int = 0) -> None:
        self.ops.append(("clear", seq_id, from_pos))
        self._backend.clear_sequence(seq_id, from_pos)


def _replay(engine: Engine, model_id: str, ops: list[tuple[Any, ...]], params: dict) -> float:
    """The floor: the engine's exact llama.cpp calls (batches, moves, sampling), no scheduler."""
    model = engine._model(model_id)
    backend = model.backend
    sampling = SamplingParams.from_kwargs(**params)

    def run() -> float:
        samplers: dict[int, Any] = {}
        started = time.perf_counter()
        for op in ops:
            if op[0] == "decode":
                rows = op[1]
                backend.decode(rows)
                for i, (_tok, _pos, seq, want) in enumerate(rows):
                    if want:
                        if seq not in samplers:
                            samplers[seq] = backend.new_sampler(sampling)
                        backend.sample(samplers[seq], i)
            elif op[0] == "move":
                backend.move_sequence(op[1], op[2])
                if op[1] in samplers:
                    samplers[op[2]] = samplers.pop(op[1])
            else:
                backend.clear_sequence(op[1], op[2])
                if op[2] == 0 and op[1] in samplers:
                    samplers.pop(op[1]).close()
        elapsed = time.perf_counter() - started
        for seq, sampler in samplers.items():
            sampler.close()
            backend.clear_sequence(seq)
        return elapsed

    return model.loop.call(run).result()


def run_throughput(
    engine: Engine,
    model_id: str,
    streams: Sequence[int] = (1, 4, 8),
    prompt_tokens: int = 200,
    max_tokens: int = 64,
    temperature: float = 0.8,
    repeat: int = 3,
) -> list[ThroughputRow]:
    params = {"max_tokens": max_tokens, "temperature": temperature, "seed": 42, "stop_at_eog": False}
    rows = []
    # Warm-up: first decodes pay one-off allocation costs.
    engine.complete(model_id, "warm up", max_tokens=4, temperature=0)
    for n in streams:
        prompts = make_prompts(engine, model_id, n, prompt_tokens)
        loop = engine._model(model_id).loop
        engine_runs, floor_runs, gaps = [], [], []
        # Alternate engine and floor, then take medians: this VM's speed drifts
        # by tens of percent over seconds, and alternation spreads that over both.
        for _ in range(repeat):
            recorder = _Recorder(loop.backend)
            loop.backend = recorder  # type: ignore[assignment]
            try:
                seconds, tokens, run_gaps = _engine_run(engine, model_id, prompts, params)
            finally:
                loop.backend = recorder._backend
            gaps.extend(run_gaps)
            engine_runs.append(tokens / seconds)
            floor_runs.append(tokens / _replay(engine, model_id, recorder.ops, params))
        engine_tps, floor_tps = statistics.median(engine_runs), statistics.median(floor_runs)
        gaps_ms = sorted(g * 1000 for g in gaps) or [0.0]
        rows.append(ThroughputRow(
            streams=n,
            engine_tokens_per_second=round(engine_tps, 2),
            floor_tokens_per_second=round(floor_tps, 2),
            ratio=round(engine_tps / floor_tps, 3),
            itl_p50_ms=round(statistics.median(gaps_ms), 2),
            itl_p95_ms=round(gaps_ms[min(len(gaps_ms) - 1, int(len(gaps_ms) * 0.95))], 2),
            generated_tokens=tokens,
        ))
    return rows


def format_table(rows: Sequence[ThroughputRow]) -> str:
    head = "streams  engine tok/s  floor tok/s  engine/floor  ITL p50 ms  ITL p95 ms"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r.streams:>7}  {r.engine_tokens_per_second:>12.1f}  {r.floor_tokens_per_second:>11.1f}"
            f"  {r.ratio:>12.3f}  {r.itl_p50_ms:>10.1f}  {r.itl_p95_ms:>10.1f}"
        )
    return "\n".join(lines)


def as_json(rows: Sequence[ThroughputRow]) -> list[dict]:
    return [asdict(r) for r in rows]
