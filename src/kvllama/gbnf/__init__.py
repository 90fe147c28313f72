"""A GBNF checker that refuses, in Python, what would hurt llama.cpp.

llama.cpp's grammar sampler is fragile against hostile input: it parses the
grammar in C++ when a request's sampler is built, inside the server process,
and several grammars that parse (or almost parse) abort the process, exhaust
its memory or hang it:

* ``{2,1}``: ``max - min`` underflows in ``handle_repetitions`` and the parser
  allocates rules until memory runs out;
* long literals under big repetitions (``"...64 KiB..."{2000}``) expand into
  hundreds of millions of grammar elements;
* a literal NUL (``"\\x00"``) or a character class that matches only NUL can
  never be matched by any token, so the first sampled token is rejected and
  llama.cpp throws "Unexpected empty grammar stack" through the C boundary;
* chains of ambiguous rule starts make its left-recursion check and its parse
  stacks exponential;
* left recursion through a rule that can match nothing without having an
  empty alternative (``r ::= e r "x"``, ``e ::= f``, ``f ::= "" | "y"``)
  passes its left-recursion check, then grows a parse stack until memory runs
  out;
* Python itself cannot encode a lone surrogate, and ctypes silently cuts the
  grammar at its first NUL character.

:func:`check_grammar` mirrors ``llama_grammar_parser::parse`` (llama.cpp's
``src/llama-grammar.cpp``, as vendored by llama-cpp-python 0.3.36) token for
token, builds the same rules llama.cpp would build (repetitions expanded the
same way, within a budget), and then runs the checks llama.cpp runs at
initialisation (undefined rules, ``root``, left recursion) plus the bounds
below. It is linear in the grammar text and in the expanded size, and both
are capped, so it always finishes quickly. Every refusal is a
:class:`~kvllama.errors.GrammarError` (an HTTP 400) naming the line, the
column and, where there is one, the rule.

It is deliberately a little stricter than llama.cpp in places where llama.cpp
does something surprising rather than fail (a repetition bound over 2000 is
silently made unbounded there; a redefined rule silently replaces the first;
``[]`` silently matches the empty string); those are refused here with a
message instead. It is never more lenient on anything that reaches llama.cpp:
what it accepts, llama.cpp parses (checked against the real library by
``tests/model/test_grammar_edge.py``). The limits are listed in
``docs/validation.md``.
"""

from __future__ import annotations

import functools

from kvllama.errors import GrammarError
from kvllama.gbnf.analysis import GrammarSummary, _Analysis
from kvllama.gbnf.lexer import _check_text
from kvllama.gbnf.limits import (
    MAX_GRAMMAR_BYTES,
    MAX_GRAMMAR_ELEMENTS,
    MAX_LEFT_RECURSION_WORK,
    MAX_NESTING,
    MAX_REPETITION,
    MAX_RULE_CHAIN,
    MAX_START_PATHS,
    TERMINAL,
    Alternative,
)
from kvllama.gbnf.parser import _Parser

__all__ = [
    "MAX_GRAMMAR_BYTES",
    "MAX_GRAMMAR_ELEMENTS",
    "MAX_LEFT_RECURSION_WORK",
    "MAX_NESTING",
    "MAX_REPETITION",
    "MAX_RULE_CHAIN",
    "MAX_START_PATHS",
    "TERMINAL",
    "Alternative",
    "GrammarError",
    "GrammarSummary",
    "check_grammar",
]


def check_grammar(text: object, *, root: str = "root", n_vocab: int | None = None) -> GrammarSummary:
    """Refuse ``text`` with a :class:`GrammarError` unless llama.cpp can safely use it.

    ``n_vocab``, when known, also bounds ``<[id]>`` token references.
    Results are cached by text, so the JSON grammars the server builds again
    and again are checked once.
    """
    if not isinstance(text, str):
        raise GrammarError(f"grammar must be a string of GBNF, got {type(text).__name__}")
    if len(text) > MAX_GRAMMAR_BYTES:  # cheap pre-check before anything walks the text
        raise GrammarError(f"grammar is {len(text)} characters; at most {MAX_GRAMMAR_BYTES} bytes "
                           "of UTF-8 are accepted")
    return _check(text, root, n_vocab)


@functools.lru_cache(maxsize=128)
def _check(text: str, root: str, n_vocab: int | None) -> GrammarSummary:
    _check_text(text)
    parser = _Parser(text, n_vocab)
    parser.parse()
    parser.check_defined(root)
    return _Analysis(parser).run(parser.symbols[root])
