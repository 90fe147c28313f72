"""``kvllama bench throughput``: the engine against a bare llama_decode loop.

For each concurrency the same work runs twice in one process, on the same
llama.cpp context: once through the engine (scheduler, events, streams), and
once as the floor — a plain loop that prefills each prompt in its own call
and then decodes every sequence's next token in one batch per step, sampling
with the same sampler chains the engine builds. The ratio engine/floor is the
engine's own overhead; everything else (the model, the batch shapes) is equal.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from kvllama.api.engine import Engine
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


def _floor_run(
    engine: Engine, model_id: str, prompts: Sequence[list[int]], params: dict
) -> tuple[float, int]:
    """The same prefill + batched decode with no scheduler, on the model's own loop thread."""
    model = engine._model(model_id)
    backend = model.backend
    max_tokens = params["max_tokens"]
    sampling = SamplingParams.from_kwargs(**params)

    def run() -> tuple[float, int]:
        samplers = [backend.new_sampler(sampling) for _ in prompts]
        try:
            started = time.perf_counter()
            last: list[int] = []
            for seq, prompt in enumerate(prompts):
                backend.clear_sequence(seq)
                step = backend.shape.n_batch
                for start in range(0, len(prompt), step):
                    chunk = prompt[start : start + step]
                    end = start + len(chunk)
                    backend.decode([(t, start + j, seq, start + j == len(prompt) - 1)
                                    for j, t in enumerate(chunk)])
                    if end == len(prompt):
                        last.append(backend.sample(samplers[seq], len(chunk) - 1))
            generated = len(prompts)
            positions = [len(p) for p in prompts]
            for _ in range(max_tokens - 1):
                rows = [(last[s], positions[s], s, True) for s in range(len(prompts))]
                backend.decode(rows)
                last = [backend.sample(samplers[s], s) for s in range(len(prompts))]
                positions = [p + 1 for p in positions]
                generated += len(prompts)
            return time.perf_counter() - started, generated
        finally:
            for seq, sampler in enumerate(samplers):
                sampler.close()
                backend.clear_sequence(seq)

    return model.loop.call(run).result()


def run_throughput(
    engine: Engine,
    model_id: str,
    streams: Sequence[int] = (1, 4, 8),
    prompt_tokens: int = 200,
    max_tokens: int = 64,
    temperature: float = 0.8,
) -> list[ThroughputRow]:
    params = {"max_tokens": max_tokens, "temperature": temperature, "seed": 42, "stop_at_eog": False}
    rows = []
    # Warm-up: first decodes pay one-off allocation costs.
    engine.complete(model_id, "warm up", max_tokens=4, temperature=0)
    for n in streams:
        prompts = make_prompts(engine, model_id, n, prompt_tokens)
        floor_seconds, floor_tokens = _floor_run(engine, model_id, prompts, params)
        seconds, tokens, gaps = _engine_run(engine, model_id, prompts, params)
        engine_tps, floor_tps = tokens / seconds, floor_tokens / floor_seconds
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
