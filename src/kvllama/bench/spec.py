"""``kvllama bench spec``: speculative decoding on and off, side by side, and the same tokens.

Two engines share one process (so one ggml kernel mode: ``GGML_CPU_TILED_MM=0``,
set by the command before llama.cpp runs), both with canonical decoding, one
with prompt-lookup speculation (``speculative_draft``). Measured, alternating
runs, medians:

* a copy-heavy task on one stream: the model rewrites a given ~500-token text,
  which is where drafts from the request's own context are accepted;
* free text on one stream (a story: nothing to look up), where drafts miss
  and the governor (engine/spec_governor.py) must keep speculation from
  costing more than it brings;
* with ``draft_model``, both single-stream tasks again with a third engine
  drafting from that model instead of prompt lookup;
* the throughput workload at several streams (distinct prompts), where the
  engine does not speculate: the ratio shows it costs nothing there.

Beside each speed: whether the two engines produced the same tokens (they
must; speculation verifies drafts in the kernel class decoding uses).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from typing import Any

from kvllama.api.engine import Engine
from kvllama.bench.throughput import MODEL_ID, make_prompts

# make_prompts tokenizes with the throughput bench's model id.
OFF, ON, DRAFT = MODEL_ID, f"{MODEL_ID}-spec", f"{MODEL_ID}-draft-model"
FREE = "Write a short story about a lighthouse keeper who finds a message in a bottle.\n\n"

TEXT = (
    "The committee postponed its decision until the engineers could inspect the damaged turbine. "
    "Farmers along the valley rotate barley, lentils and clover to keep the soil productive. "
    "Several volunteers catalogued migratory birds near the estuary throughout the autumn. "
    "A well-written contract specifies deliverables, deadlines, penalties and dispute resolution. "
)


def copy_prompt(repeats: int = 6) -> str:
    """About 500 tokens of text and the start of its copy, with one small edit asked for."""
    text = TEXT * repeats
    return f"Copy the text, writing 'river' for 'estuary'.\nText: {text}\nCopy: {text[:80]}"


def run_spec(model: str | None, options: dict[str, Any], streams: Sequence[int], max_tokens: int,
             draft: int, repeat: int, draft_model: str | None = None) -> dict[str, Any]:
    base = {**options, "canonical_decode": True, "n_seq_max": max(max(streams, default=1), 1)}
    with Engine(cache=None) as engine:
        engine.load_model(OFF, model, **base)
        engine.load_model(ON, model, **base, speculative_draft=draft)
        single = [("copy", copy_prompt()), ("free text", FREE)]
        rows = [_single_row(engine, f"{task}, 1 stream", prompt, ON, max_tokens * 4, repeat)
                for task, prompt in single]
        if draft_model is not None:
            engine.load_model(DRAFT, model, **base, speculative_draft=draft, draft_model=draft_model)
            rows += [_single_row(engine, f"{task}, draft model", prompt, DRAFT, max_tokens * 4, repeat)
                     for task, prompt in single]
        for n in streams:
            rows.append(_streams_row(engine, n, max_tokens, repeat))
    return {"benchmark": "spec", "draft": draft, "draft_model": draft_model, "rows": rows}


def _single_row(engine: Engine, task: str, prompt: str, on_id: str, max_tokens: int,
                repeat: int) -> dict[str, Any]:
    runs: dict[str, list[float]] = {"off": [], "on": []}
    tokens: dict[str, tuple[int, ...]] = {}
    stats = None
    for _ in range(repeat):
        for name, model_id in (("off", OFF), ("on", on_id)):
            r = engine.complete(model_id, prompt, max_tokens=max_tokens, temperature=0.0)
            runs[name].append(len(r.generated_tokens) / max(r.stats.decode_seconds, 1e-9))
            tokens[name] = r.generated_tokens
            stats = r.stats if name == "on" else stats
    off, on = statistics.median(runs["off"]), statistics.median(runs["on"])
    return {"task": task, "off_tps": off, "on_tps": on, "ratio": on / off,
            "same_tokens": tokens["off"] == tokens["on"],
            "drafted": stats.drafted_tokens if stats else 0,
            "accepted": stats.accepted_tokens if stats else 0}


def _streams_row(engine: Engine, n: int, max_tokens: int, repeat: int) -> dict[str, Any]:
    prompts = make_prompts(engine, n, 200) if n else []
    runs: dict[str, list[float]] = {"off": [], "on": []}
    tokens: dict[str, list[tuple[int, ...]]] = {}
    for _ in range(repeat):
        for name, model_id in (("off", OFF), ("on", ON)):
            started = time.perf_counter()
            streams = [engine.infer(model_id, p, max_tokens=max_tokens, temperature=0.0) for p in prompts]
            results = [s.result() for s in streams]
            runs[name].append(sum(len(r.generated_tokens) for r in results) / (time.perf_counter() - started))
            tokens[name] = [r.generated_tokens for r in results]
    off, on = statistics.median(runs["off"]), statistics.median(runs["on"])
    return {"task": f"throughput, {n} streams", "off_tps": off, "on_tps": on, "ratio": on / off,
            "same_tokens": tokens["off"] == tokens["on"], "drafted": 0, "accepted": 0}


def format_spec(report: dict[str, Any]) -> str:
    source = "prompt lookup" + (f"; draft model {report['draft_model']}" if report.get("draft_model") else "")
    lines = [f"speculative decoding ({source}, up to {report['draft']} draft tokens), "
             "canonical decoding both sides",
             f"{'task':<26} {'off tok/s':>10} {'on tok/s':>10} {'on/off':>7} {'same tokens':>12} "
             f"{'accepted':>14}"]
    for row in report["rows"]:
        acc = f"{row['accepted']}/{row['drafted']}" if row["drafted"] else "-"
        lines.append(f"{row['task']:<26} {row['off_tps']:>10.1f} {row['on_tps']:>10.1f} {row['ratio']:>7.2f} "
                     f"{'yes' if row['same_tokens'] else 'NO':>12} {acc:>14}")
    return "\n".join(lines)
