"""The bounds the GBNF checker enforces, and the shape of the rules it builds.

One place for every limit (``docs/validation.md`` lists them) so the
parser, the repetition unrolling and the analysis all refuse against the same
numbers, and so callers can quote them (``kvllama.server.grammar`` sizes the
JSON grammars it generates by :data:`MAX_REPETITION`).
"""

from __future__ import annotations

# Grammar text, in UTF-8 bytes. Hand-written grammars are a few KiB; the JSON
# schema converter's output for a large schema stays well under this.
MAX_GRAMMAR_BYTES = 64 * 1024
# Any {m,n} bound (llama.cpp's own MAX_REPETITION_THRESHOLD): llama.cpp refuses
# a larger minimum and silently turns a larger maximum into "unbounded".
MAX_REPETITION = 2000
# Grammar elements after llama.cpp expands repetitions into rules (8 bytes
# each there, plus one vector per rule): a few MB at most, and bounds the
# time this checker and llama.cpp's parser spend.
MAX_GRAMMAR_ELEMENTS = 250_000
# Nested parentheses: llama.cpp parses groups recursively (C++ stack).
MAX_NESTING = 64
# Steps of llama.cpp's left-recursion check (recursive, not memoised, so a
# chain of rules with two starts each costs 2^depth steps) and its depth.
MAX_LEFT_RECURSION_WORK = 1_000_000
MAX_RULE_CHAIN = 10_000
# Ways one rule can begin (chains of rules that can come first, each counted):
# a bound on the parse stacks llama.cpp creates when it expands a position,
# which it checks every candidate token against and de-duplicates in O(n^2).
MAX_START_PATHS = 10_000

_MAX_CODE_POINT = 0x10FFFF
_CAP = 1 << 62  # counts beyond this are "too many" anyway; keeps the integers small

# Rules are kept as lists of alternatives, each a list of ints: a rule
# reference is the rule's id (>= 0), and each of llama.cpp's terminal elements
# (a character, a range's upper end, ".", a token) is TERMINAL. That is all the
# checks after parsing need, and it keeps them fast (min() finds "all refs").
TERMINAL = -1
Alternative = list[int]
