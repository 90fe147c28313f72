"""``kvllama bench throughput``: the engine against a bare llama.cpp loop, by concurrency.

For each concurrency ``N`` the same work runs through the engine's public API
(``Engine.infer``, temperature 0, no stop at end-of-generation) and through
the floor (:mod:`kvllama.bench.floor`): a loop over the same llama-cpp-python
wheel with nothing of the engine in it, in a child process with llama.cpp's
stock kernel settings (:mod:`kvllama.bench.floor_process`). Both load the same GGUF with the same
options (threads, cells per sequence, flash attention, KV layout); runs
alternate and the medians are compared, because this kind of machine drifts by
tens of percent over seconds. engine/floor is then what the engine costs over
the least the wheel can do: scheduling, events, streams, sampler chains, and
its exactness rules.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from tqdm import tqdm

from kvllama.api.engine import Engine
from kvllama.bench.floor_process import FloorProcess
from kvllama.events import TokenEvent
from kvllama.options import ModelOptions

MODEL_ID = "bench"
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


def prompt_text(i: int, tokens: int) -> str:
    """Prompt ``i``'s text: at least ``tokens`` tokens of words, reproducible, distinct per ``i``."""
    words = [_WORDS[(i * 7 + j * 3 + j * j) % len(_WORDS)] for j in range(tokens * 2)]
    return f"Report {i}: " + " ".join(words)


def make_prompts(engine: Engine, n: int, tokens: int) -> list[list[int]]:
    """Distinct prompts of exactly ``tokens`` tokens (BOS + words), reproducible."""
    return [engine.tokenize(MODEL_ID, prompt_text(i, tokens))[:tokens] for i in range(n)]


def _engine_run(engine: Engine, prompts: Sequence[list[int]], params: dict,
                separate: bool = False) -> tuple[float, int, list[float]]:
    """All streams at once, one consumer thread each so token times are arrival times.

    Admitted together (``infer_many``, as the floor prefills them), or with
    ``separate`` one ``infer`` call per thread, released together, as N HTTP
    clients arrive: the engine's burst window must gather them.
    """
    started = time.perf_counter()
    streams: list[Any] = [None] * len(prompts) if separate else engine.infer_many(MODEL_ID, prompts, **params)
    gaps: list[list[float]] = [[] for _ in streams]
    counts = [0] * len(streams)
    errors: list[BaseException] = []
    go = threading.Barrier(len(prompts))

    def consume(i: int) -> None:
        if separate:
            go.wait()
            streams[i] = engine.infer(MODEL_ID, prompts[i], **params)
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


def _row(n: int, engine_runs: list[float], floor_runs: list[float], gaps: list[float], tokens: int
         ) -> ThroughputRow:
    engine_tps, floor_tps = statistics.median(engine_runs), statistics.median(floor_runs)
    gaps_ms = sorted(g * 1000 for g in gaps) or [0.0]
    return ThroughputRow(
        streams=n,
        engine_tokens_per_second=round(engine_tps, 2),
        floor_tokens_per_second=round(floor_tps, 2),
        ratio=round(engine_tps / floor_tps, 3),
        itl_p50_ms=round(statistics.median(gaps_ms), 2),
        itl_p95_ms=round(gaps_ms[min(len(gaps_ms) - 1, int(len(gaps_ms) * 0.95))], 2),
        generated_tokens=tokens,
    )


def run_throughput(
    path: str | None,
    options: dict[str, Any],
    streams: Sequence[int] = (1, 4, 8),
    prompt_tokens: int = 200,
    max_tokens: int = 64,
    repeat: int = 3,
    separate: bool = False,
) -> list[ThroughputRow]:
    """Engine and floor side by side for each concurrency in ``streams``.

    ``path``: any GGUF (None: the embedded default). ``options``: model
    options for both sides; ``n_seq_max`` defaults to the largest concurrency.
    """
    from kvllama.models.default import default_model_path

    path = path if path is not None else default_model_path()
    options = {**options, "n_seq_max": options.get("n_seq_max") or max(streams)}
    params = {"max_tokens": max_tokens, "temperature": 0.0, "stop_at_eog": False}
    # No KV reuse of any kind: a saved prompt row, or a finished request's prompt kept in its
    # slot, would let the engine skip the repeats' prefill, which the floor always pays.
    # The floor runs in a child process with llama.cpp's stock kernel settings (floor_process.py).
    with Engine(cache=None) as engine, FloorProcess(path, ModelOptions.from_kwargs(**options)) as floor:
        engine.load_model(MODEL_ID, path, **{**options, "keep_finished": False})
        # Warm-up: first decodes pay one-off allocation costs, on both sides.
        engine.complete(MODEL_ID, "warm up", max_tokens=4, temperature=0)
        floor.run(make_prompts(engine, 1, 8), 4)
        rows = []
        bar = tqdm(total=len(streams) * repeat, desc="bench throughput", unit="run", disable=None)
        with bar:
            for n in streams:
                prompts = make_prompts(engine, n, prompt_tokens)
                engine_runs, floor_runs, gaps = [], [], []
                tokens = 0
                # Alternate engine and floor, then take medians: the drift spreads over both.
                for _ in range(repeat):
                    bar.set_postfix(streams=n)
                    seconds, tokens, run_gaps = _engine_run(engine, prompts, params, separate)
                    gaps.extend(run_gaps)
                    engine_runs.append(tokens / seconds)
                    floor_seconds, floor_tokens, _ = floor.run(prompts, max_tokens)
                    floor_runs.append(floor_tokens / floor_seconds)
                    bar.update()
                rows.append(_row(n, engine_runs, floor_runs, gaps, tokens))
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
