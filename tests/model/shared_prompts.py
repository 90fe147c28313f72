"""Prompts that share a long system part and then part ways, for the shared-prefix tests.

``system(words, tag)`` is about 1.4 tokens a word on Gemma 3 (560 words pass the
512-token sliding window); ``question(i)`` is about 100 tokens, so a prompt's own
rows (64-token grid, 8-token tail) end past the system prompt.
"""

from __future__ import annotations

WORDS = ("archive", "ledger", "harbor", "compass", "lantern", "orchard", "quartz", "signal")


def system(words: int, tag: str) -> str:
    body = " ".join(f"{WORDS[i % len(WORDS)]} {i}" for i in range(words // 2))
    return f"System ({tag}): keep these notes. {body}\n\n"


def question(i: int) -> str:
    return f"User {i} asks: " + " ".join(f"what of item {i * 37 + k} in city {i}?" for k in range(12))
