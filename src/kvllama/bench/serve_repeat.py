"""``kvllama bench serve --repeat-words``: cold vs warm TTFT of one prompt sent twice.

For each word count W: a prompt of W words (a unique nonce first word, then
deterministic text) goes to ``/v1/completions`` with ``max_tokens=1``, then
the same prompt plus `` again``. The first prefill is cold; the second can
reuse the first's KV cache for all but a token or two. TTFT is measured on the
client (send -> first content chunk, or the end of the stream if none came).
Plain OpenAI fields only, so any OpenAI-compatible server can be measured.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any, TextIO

import httpx

from kvllama.bench.serve import nonce_word, stream_request

# Prose, not a list of the commonest short words: these sentences run 1.25 tokens a
# word with Gemma 3's tokenizer (2,048 words: 2,562 tokens), ordinary English text
# about 1.3, the bench's chat notes 1.0, which would make "2,048 words" a much
# shorter prompt than a user's.
_PROSE = (
    "The harbor master logged every arriving vessel before dawn, noting cargo, crew and weather.",
    "In the archive, brittle letters from 1887 described a bridge that was never finished.",
    "Our quarterly forecast assumes modest growth, although shipping costs remain unpredictable.",
    "She calibrated the spectrometer twice, then compared the readings with last year's baseline.",
    "Farmers along the valley rotate barley, lentils and clover to keep the soil productive.",
    "The committee postponed its decision until the engineers could inspect the damaged turbine.",
    "Several volunteers catalogued migratory birds near the estuary throughout the autumn.",
    "A well-written contract specifies deliverables, deadlines, penalties and dispute resolution.",
)


def repeat_prompt(words: int, nonce: str) -> str:
    """``words`` words of prose: ``nonce`` first, then the sentences above in turn."""
    out = [nonce]
    k = 0
    while len(out) < words:
        out.extend(_PROSE[k % len(_PROSE)].split())
        k += 1
    return " ".join(out[:words])


def parse_word_counts(text: str) -> list[int]:
    """``"2048,4096"`` -> ``[2048, 4096]``; empty -> ``[]``."""
    counts = [int(x) for x in text.split(",") if x.strip()]
    if any(c < 1 for c in counts):
        raise ValueError("--repeat-words counts must be at least 1")
    return counts


def run_repeat(
    base_url: str, model: str, word_counts: list[int], api_key: str | None = None, timeout: float = 600.0,
) -> dict[str, Any]:
    """Cold then warm TTFT per word count; ``{"rows": [...], "errors": [...]}``."""
    return asyncio.run(_repeat(base_url, model, word_counts, api_key, timeout))


async def _repeat(
    base_url: str, model: str, word_counts: list[int], api_key: str | None, timeout: float,
) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    rows: list[dict[str, Any]] = []
    errors: list[str] = []
    async with httpx.AsyncClient(base_url=base_url.rstrip("/"), headers=headers, timeout=timeout) as client:
        for words in word_counts:
            prompt = repeat_prompt(words, nonce_word())
            cold = await stream_request(client, "/v1/completions", _body(model, prompt))
            warm = await stream_request(client, "/v1/completions", _body(model, prompt + " again"))
            bad = [f"{words} words {name}: {r['error']}" for name, r in (("cold", cold), ("warm", warm))
                   if "error" in r]
            errors.extend(bad)
            if not bad:
                rows.append(repeat_row(words, cold, warm))
    return {"rows": rows, "errors": errors}


def _body(model: str, prompt: str) -> dict[str, Any]:
    return {"model": model, "prompt": prompt, "max_tokens": 1, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}}


def repeat_row(words: int, cold: dict[str, Any], warm: dict[str, Any]) -> dict[str, Any]:
    """One table row from the cold and warm request records."""
    return {
        "words": words,
        "prompt_tokens": cold.get("prompt_tokens") or None,
        "cold_ttft": cold["ttft"],
        "warm_ttft": warm["ttft"],
        "ratio": cold["ttft"] / warm["ttft"] if warm["ttft"] > 0 else None,
        "warm_cached_tokens": warm.get("cached_tokens") or None,
    }


def print_repeat(report: dict[str, Any], file: TextIO | None = None) -> None:
    """A small table of :func:`run_repeat`'s report."""
    out = file or sys.stdout

    def cell(v: float | None, fmt: str) -> str:
        return "-" if v is None else format(v, fmt)

    print("repeat: the same prompt twice (max_tokens=1); cold = unique prefix, warm = + \" again\"", file=out)
    print(f"{'words':>6} {'prompt tok':>11} {'cold ttft ms':>13} {'warm ttft ms':>13} {'cold/warm':>10} "
          f"{'warm cached':>12}", file=out)
    for row in report["rows"]:
        cold_ms = cell(row["cold_ttft"] * 1000, ".0f")
        warm_ms = cell(row["warm_ttft"] * 1000, ".0f")
        print(f"{row['words']:>6} {cell(row['prompt_tokens'], 'd'):>11} {cold_ms:>13} {warm_ms:>13} "
              f"{cell(row['ratio'], '.2f'):>10} {cell(row['warm_cached_tokens'], 'd'):>12}", file=out)
    for err in report["errors"]:
        print(f"error: {err}", file=out)
