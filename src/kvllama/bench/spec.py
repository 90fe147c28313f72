"""``kvllama bench spec``: speculative decoding on and off, side by side, and the same tokens.

Two engines share one process, one with prompt-lookup speculation
(``speculative_draft``), the other the default engine without it. On kvllama's
patched llama.cpp build (docs/kernel-patch.md) both are default engines: a
verify pass computes rows as decode steps do, so speculation needs nothing
else. On a stock build both run canonical decoding (``GGML_CPU_TILED_MM=0``,
set by the command before llama.cpp runs), which speculation needs there.
Measured, alternating runs, medians:

* a copy-heavy task on one stream: the model rewrites a given ~500-token text,
  which is where drafts from the request's own context are accepted;
* free text on one stream (a story: nothing to look up), and a list the model
  continues by pattern (counting), where drafts mostly miss and the governor
  (decoding/spec_governor.py) must keep speculation from costing more than it
  brings;
* with ``draft_model``, both single-stream tasks again with a third engine
  drafting from that model instead of prompt lookup;
* the throughput workload at several streams (distinct prompts), where the
  engine does not speculate: the ratio shows it costs nothing there;
* ``Engine.verify`` of an 8-token draft against a one-token ``complete`` of
  the same ~500-token prefix, both with the prefix already computed (kept in
  its slot): what a caller running its own speculation loop pays per check.

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
PATTERN = "Count from 1 to 300, one number per line.\n1\n2\n3\n4\n5\n"

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
             draft: int, repeat: int, draft_model: str | None = None,
             canonical: bool = False) -> dict[str, Any]:
    base = {**options, "canonical_decode": canonical, "n_seq_max": max(max(streams, default=1), 1)}
    with Engine(cache=None) as engine:
        engine.load_model(OFF, model, **base)
        engine.load_model(ON, model, **base, speculative_draft=draft)
        single = [("copy", copy_prompt()), ("free text", FREE), ("pattern", PATTERN)]
        rows = [_single_row(engine, f"{task}, 1 stream", prompt, ON, max_tokens * 4, repeat)
                for task, prompt in single]
        if draft_model is not None:
            engine.load_model(DRAFT, model, **base, speculative_draft=draft, draft_model=draft_model)
            rows += [_single_row(engine, f"{task}, draft model", prompt, DRAFT, max_tokens * 4, repeat)
                     for task, prompt in single]
        for n in streams:
            rows.append(_streams_row(engine, n, max_tokens, repeat))
        verify = _verify_row(engine, copy_prompt(), repeat)
    return {"benchmark": "spec", "draft": draft, "draft_model": draft_model, "canonical": canonical,
            "rows": rows, "verify": verify}


def _verify_row(engine: Engine, prompt: str, repeat: int, n_draft: int = 8) -> dict[str, Any]:
    """Seconds of verify(prefix, 8 correct draft tokens) vs complete(prefix, 1 token), medians."""
    prefix = engine.tokenize(OFF, prompt)
    greedy = engine.complete(OFF, prefix, max_tokens=n_draft + 1, temperature=0.0).generated_tokens
    draft = list(greedy[:n_draft])
    engine.complete(OFF, prefix, max_tokens=1, temperature=0.0)  # the prefix, computed once
    times: dict[str, list[float]] = {"complete": [], "verify": []}
    answers = set()
    for _ in range(max(3, repeat)):
        started = time.perf_counter()
        engine.complete(OFF, prefix, max_tokens=1, temperature=0.0)
        times["complete"].append(time.perf_counter() - started)
        started = time.perf_counter()
        answers.add(engine.verify(OFF, prefix, draft))
        times["verify"].append(time.perf_counter() - started)
    complete, verify = statistics.median(times["complete"]), statistics.median(times["verify"])
    full = len(greedy) > n_draft
    return {"prefix_tokens": len(prefix), "draft": len(draft), "complete_s": complete, "verify_s": verify,
            "ratio": verify / complete,
            "exact": full and answers == {(n_draft, greedy[n_draft])}}


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
    sides = "canonical decoding both sides" if report.get("canonical") else "against the default engine"
    lines = [f"speculative decoding ({source}, up to {report['draft']} draft tokens), {sides}",
             f"{'task':<26} {'off tok/s':>10} {'on tok/s':>10} {'on/off':>7} {'same tokens':>12} "
             f"{'accepted':>14}"]
    for row in report["rows"]:
        acc = f"{row['accepted']}/{row['drafted']}" if row["drafted"] else "-"
        lines.append(f"{row['task']:<26} {row['off_tps']:>10.1f} {row['on_tps']:>10.1f} {row['ratio']:>7.2f} "
                     f"{'yes' if row['same_tokens'] else 'NO':>12} {acc:>14}")
    v = report.get("verify")
    if v:
        lines.append(f"verify of a {v['draft']}-token draft on a {v['prefix_tokens']}-token prefix: "
                     f"{v['verify_s'] * 1000:.1f} ms vs complete of 1 token {v['complete_s'] * 1000:.1f} ms "
                     f"= {v['ratio']:.2f}x; answer equals greedy decoding: {'yes' if v['exact'] else 'NO'}")
    return "\n".join(lines)
