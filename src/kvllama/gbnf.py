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
import re
from dataclasses import dataclass

from kvllama.errors import GrammarError

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

_SURROGATE = re.compile("[\ud800-\udfff]")
_WORD = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-")
_DIGITS = frozenset("0123456789")
_HEX = frozenset("0123456789abcdefABCDEF")
_SIMPLE_ESCAPES = {"t": 9, "r": 13, "n": 10, "\\": 92, '"': 34, "[": 91, "]": 93, "-": 45}


@dataclass(frozen=True)
class GrammarSummary:
    """What llama.cpp will build from an accepted grammar (for tests and logs)."""

    rules: int
    elements: int
    start_paths: int
    left_recursion_work: int


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


def _where(text: str, pos: int) -> str:
    line = text.count("\n", 0, pos) + 1
    col = pos - (text.rfind("\n", 0, pos) + 1) + 1
    return f"line {line}, column {col}"


def _check_text(text: str) -> None:
    if not text.strip():
        raise GrammarError("grammar is empty; it needs at least a 'root' rule")
    bad = _SURROGATE.search(text)
    if bad is not None:
        raise GrammarError(f"grammar contains a lone surrogate U+{ord(bad.group()):04X} at "
                           f"{_where(text, bad.start())}; it is not valid Unicode text")
    nul = text.find("\x00")
    if nul >= 0:
        raise GrammarError(f"grammar contains a NUL character at {_where(text, nul)}; no token can "
                           "match NUL, and llama.cpp would read the grammar only up to it")
    size = len(text.encode("utf-8"))
    if size > MAX_GRAMMAR_BYTES:
        raise GrammarError(f"grammar is {size} bytes of UTF-8; at most {MAX_GRAMMAR_BYTES} are accepted")


class _Parser:
    """``llama_grammar_parser::parse``, over code points, building the same rules."""

    def __init__(self, text: str, n_vocab: int | None) -> None:
        self.text = text
        self.n = len(text)
        self.n_vocab = n_vocab
        self.symbols: dict[str, int] = {}
        # Per symbol id: the rule's alternatives (None until defined), its user-visible
        # rule name, and where it was first mentioned (for "undefined" errors).
        self.rules: list[list[Alternative] | None] = []
        self.origin: list[str] = []
        self.mentioned: list[int] = []
        self.defined_at: dict[str, int] = {}
        self.elements = 0
        self._rule = ""
        self._depth = 0

    # --- errors -------------------------------------------------------------

    def fail(self, pos: int, message: str) -> GrammarError:
        rule = f" (rule {self._rule!r})" if self._rule else ""
        return GrammarError(f"grammar error at {_where(self.text, pos)}{rule}: {message}")

    def _at(self, pos: int) -> str:
        return self.text[pos] if pos < self.n else ""

    def _excerpt(self, pos: int) -> str:
        return repr(self.text[pos : pos + 20]) if pos < self.n else "end of input"

    # --- symbols and rules --------------------------------------------------

    def _symbol(self, name: str, pos: int) -> int:
        sid = self.symbols.get(name)
        if sid is None:
            sid = self.symbols[name] = len(self.rules)
            self.rules.append(None)
            self.origin.append(name)
            self.mentioned.append(pos)
        return sid

    def _generated(self, pos: int) -> int:
        # llama.cpp names these "<rule>_<id>"; '_' is not a word character, so no
        # user rule can refer to one, and only their number matters here.
        sid = len(self.rules)
        self.rules.append(None)
        self.origin.append(self._rule)
        self.mentioned.append(pos)
        return sid

    def _spend(self, count: int, pos: int) -> None:
        self.elements += count
        if self.elements > MAX_GRAMMAR_ELEMENTS:
            raise self.fail(pos, f"the grammar expands to more than {MAX_GRAMMAR_ELEMENTS} elements once "
                                 "llama.cpp unrolls its repetitions; use smaller {m,n} bounds, * or +, "
                                 "or shorter repeated items")

    # --- lexical helpers ----------------------------------------------------

    def space(self, pos: int, newline_ok: bool) -> int:
        text, n = self.text, self.n
        while pos < n:
            c = text[pos]
            if c == "#":
                while pos < n and text[pos] not in "\r\n":
                    pos += 1
            elif c in " \t" or (newline_ok and c in "\r\n"):
                pos += 1
            else:
                break
        return pos

    def name_end(self, pos: int) -> int:
        end = pos
        while end < self.n and self.text[end] in _WORD:
            end += 1
        if end == pos:
            raise self.fail(pos, f"expecting a rule name at {self._excerpt(pos)}")
        return end

    def number(self, pos: int) -> tuple[int, int]:
        """A decimal integer and the position after it (20 digits at most: llama.cpp's stoull range)."""
        end = pos
        while end < self.n and self.text[end] in _DIGITS:
            end += 1
        if end == pos:
            raise self.fail(pos, f"expecting an integer at {self._excerpt(pos)}")
        if end - pos > 20:
            raise self.fail(pos, f"integer {self.text[pos:pos + 24]}... is too long")
        return int(self.text[pos:end]), end

    def hex(self, pos: int, size: int, escape_at: int) -> tuple[int, int]:
        end = pos
        while end < pos + size and end < self.n and self.text[end] in _HEX:
            end += 1
        if end != pos + size:
            raise self.fail(escape_at, f"expecting {size} hex digits after {self.text[escape_at:pos]!r}")
        return int(self.text[pos:end], 16), end

    def char(self, pos: int) -> tuple[int, int]:
        """One (possibly escaped) character: its code point and the position after it."""
        text = self.text
        if pos >= self.n:
            raise self.fail(pos, "unexpected end of input")
        if text[pos] != "\\":
            return ord(text[pos]), pos + 1
        kind = self._at(pos + 1)
        size = {"x": 2, "u": 4, "U": 8}.get(kind)
        if size is None:
            if kind in _SIMPLE_ESCAPES:
                return _SIMPLE_ESCAPES[kind], pos + 2
            raise self.fail(pos, f"unknown escape {text[pos:pos + 2]!r} (known: \\x \\u \\U \\t \\r \\n "
                                 "\\\\ \\\" \\[ \\] \\-)")
        value, end = self.hex(pos + 2, size, pos)
        if value > _MAX_CODE_POINT:
            raise self.fail(pos, f"escape {text[pos:end]!r} is not a Unicode code point (max U+10FFFF)")
        if 0xD800 <= value <= 0xDFFF:
            raise self.fail(pos, f"escape {text[pos:end]!r} is a lone surrogate, which no UTF-8 text "
                                 "contains")
        return value, end

    # --- grammar structure --------------------------------------------------

    def parse(self) -> None:
        pos = self.space(0, True)
        while pos < self.n:
            pos = self.parse_rule(pos)
        if not self.rules:
            raise GrammarError("grammar has no rules; it needs at least a 'root' rule")

    def parse_rule(self, pos: int) -> int:
        self._rule = ""
        end = self.name_end(pos)
        name = self.text[pos:end]
        self._rule = name
        sid = self._symbol(name, pos)
        if name in self.defined_at:
            raise self.fail(pos, f"rule {name!r} is defined twice (first at "
                                 f"{_where(self.text, self.defined_at[name])}); llama.cpp would "
                                 "silently keep only the last definition")
        self.defined_at[name] = pos
        pos = self.space(end, False)
        if self.text[pos : pos + 3] != "::=":
            raise self.fail(pos, f"expecting '::=' after the rule name, at {self._excerpt(pos)}")
        pos = self.alternates(self.space(pos + 3, True), sid, nested=False)
        if self._at(pos) == "\r":
            pos += 2 if self._at(pos + 1) == "\n" else 1
        elif self._at(pos) == "\n":
            pos += 1
        elif pos < self.n:
            raise self.fail(pos, f"expecting a newline or the end after the rule, at {self._excerpt(pos)}")
        return self.space(pos, True)

    def alternates(self, pos: int, sid: int, nested: bool) -> int:
        alts: list[Alternative] = [[]]
        pos = self.sequence(pos, alts[-1], nested)
        while self._at(pos) == "|":
            self._spend(1, pos)  # llama.cpp's ALT element
            alts.append([])
            pos = self.sequence(self.space(pos + 1, True), alts[-1], nested)
        self._spend(1, pos)  # END
        self.rules[sid] = alts
        return pos

    def sequence(self, pos: int, rule: Alternative, nested: bool) -> int:
        text = self.text
        last_sym_start = len(rule)
        n_prev_rules = 1
        while pos < self.n:
            c = text[pos]
            start = pos
            if c == '"':
                last_sym_start, n_prev_rules = len(rule), 1
                pos = self.literal(pos, rule)
                pos = self.space(pos, nested)
            elif c == "[":
                last_sym_start, n_prev_rules = len(rule), 1
                pos = self.char_class(pos, rule)
                pos = self.space(pos, nested)
            elif c in "<!":
                last_sym_start, n_prev_rules = len(rule), 1
                pos = self.token(pos, rule)
                pos = self.space(pos, nested)
            elif c in _WORD:
                end = self.name_end(pos)
                sid = self._symbol(text[pos:end], pos)
                last_sym_start, n_prev_rules = len(rule), 1
                rule.append(sid)
                self._spend(1, pos)
                pos = self.space(end, nested)
            elif c == "(":
                pos, n_prev_rules, last_sym_start = self.group(pos, rule)
                pos = self.space(pos, nested)
            elif c == ".":
                last_sym_start, n_prev_rules = len(rule), 1
                rule.append(TERMINAL)
                self._spend(1, pos)
                pos = self.space(pos + 1, nested)
            elif c in "*+?":
                pos = self.space(pos + 1, nested)
                low, high = {"*": (0, None), "+": (1, None), "?": (0, 1)}[c]
                n_prev_rules = self.repeat(start, rule, last_sym_start, n_prev_rules, low, high)
            elif c == "{":
                pos, low, high = self.braces(pos, nested)
                n_prev_rules = self.repeat(start, rule, last_sym_start, n_prev_rules, low, high)
            else:
                break
        return pos

    def literal(self, pos: int, rule: Alternative) -> int:
        start, first = pos, len(rule)
        pos += 1
        while self._at(pos) != '"':
            if pos >= self.n:
                raise self.fail(start, "unterminated string literal (unexpected end of input)")
            value, after = self.char(pos)
            if value == 0:
                raise self.fail(pos, "a string literal contains \\x00 (NUL); no token can ever match it, "
                                     "so llama.cpp would reject every token")
            rule.append(TERMINAL)
            pos = after
        self._spend(len(rule) - first, start)
        return pos + 1

    def char_class(self, pos: int, rule: Alternative) -> int:
        start = pos
        pos += 1
        negated = self._at(pos) == "^"
        if negated:
            pos += 1
        first = len(rule)
        spans: list[tuple[int, int]] = []
        while self._at(pos) != "]":
            if pos >= self.n:
                raise self.fail(start, "unterminated character class (unexpected end of input)")
            low, pos = self.char(pos)
            rule.append(TERMINAL)  # CHAR / CHAR_NOT, then CHAR_ALT
            high = low
            if self._at(pos) == "-" and self._at(pos + 1) != "]":
                if pos + 1 >= self.n:
                    raise self.fail(start, "unterminated character class (unexpected end of input)")
                high, pos = self.char(pos + 1)
                rule.append(TERMINAL)  # CHAR_RNG_UPPER
            spans.append((low, high))
        if not spans:
            raise self.fail(start, f"empty character class {self.text[start:pos + 1]!r}; llama.cpp would "
                                   "treat it as matching the empty string")
        if not _class_matches_something(spans, negated=negated):
            raise self.fail(start, f"character class {self.text[start:pos + 1]!r} matches no character "
                                   "but NUL (or none at all); no token can ever match it")
        self._spend(len(rule) - first, start)
        return pos + 1

    def token(self, pos: int, rule: Alternative) -> int:
        start = pos
        negated = self.text[pos] == "!"
        if negated:
            pos += 1
        if self._at(pos) != "<":
            raise self.fail(pos, f"expecting '<' after '!', at {self._excerpt(pos)}")
        pos += 1
        if self._at(pos) == "[":
            token_id, end = self.number(pos + 1)
            if token_id > 0xFFFFFFFF:
                raise self.fail(start, f"token id {token_id} is too big")
            if not negated and self.n_vocab is not None and token_id >= self.n_vocab:
                raise self.fail(start, f"token id {token_id} is not in the vocabulary "
                                       f"({self.n_vocab} tokens)")
            if self._at(end) != "]" or self._at(end + 1) != ">":
                raise self.fail(end, f"expecting ']>' after the token id, at {self._excerpt(end)}")
            pos = end + 2
        else:
            # <name>: llama.cpp tokenizes it with the model's vocabulary and
            # refuses it unless it is exactly one token; nothing to check here.
            end = self.text.find(">", pos)
            if end < 0:
                raise self.fail(start, "unterminated token reference: expecting '>'")
            pos = end + 1
        rule.append(TERMINAL)
        self._spend(1, start)
        return pos

    def group(self, pos: int, rule: Alternative) -> tuple[int, int, int]:
        start = pos
        self._depth += 1
        if self._depth > MAX_NESTING:
            raise self.fail(pos, f"parentheses nested more than {MAX_NESTING} deep")
        pos = self.space(pos + 1, True)
        n_before = len(self.rules)
        sid = self._generated(pos)
        pos = self.alternates(pos, sid, nested=True)
        n_prev_rules = max(1, len(self.rules) - n_before)
        last_sym_start = len(rule)
        rule.append(sid)
        self._spend(1, start)
        if self._at(pos) != ")":
            raise self.fail(pos, f"expecting ')' to close the group opened at {_where(self.text, start)}, "
                                 f"at {self._excerpt(pos)}")
        self._depth -= 1
        return pos + 1, n_prev_rules, last_sym_start

    def braces(self, pos: int, nested: bool) -> tuple[int, int, int | None]:
        start = pos
        pos = self.space(pos + 1, nested)
        if self._at(pos) not in _DIGITS:
            raise self.fail(pos, f"expecting an integer after '{{', at {self._excerpt(pos)}")
        low, end = self.number(pos)
        pos = self.space(end, nested)
        high: int | None
        if self._at(pos) == "}":
            high = low
            pos = self.space(pos + 1, nested)
        elif self._at(pos) == ",":
            pos = self.space(pos + 1, nested)
            high = None
            if self._at(pos) in _DIGITS:
                high, end = self.number(pos)
                pos = self.space(end, nested)
            if self._at(pos) != "}":
                raise self.fail(pos, f"expecting '}}' to close the repetition, at {self._excerpt(pos)}")
            pos = self.space(pos + 1, nested)
        else:
            raise self.fail(pos, f"expecting ',' or '}}' in the repetition, at {self._excerpt(pos)}")
        bounds = self.text[start:pos].strip()
        if low > MAX_REPETITION or (high is not None and high > MAX_REPETITION):
            raise self.fail(start, f"repetition {bounds} is over the limit of {MAX_REPETITION} "
                                   "(llama.cpp unrolls every repetition into rules); use * or + for "
                                   "long runs")
        if high is not None and low > high:
            raise self.fail(start, f"repetition {bounds} has its minimum above its maximum")
        return pos, low, high

    def repeat(
        self, pos: int, rule: Alternative, last_sym_start: int, n_prev_rules: int,
        low: int, high: int | None,
    ) -> int:
        """``handle_repetitions``: unroll the last item into copies and helper rules, as llama.cpp does."""
        if last_sym_start == len(rule):
            raise self.fail(pos, f"{self.text[pos]!r} has no item before it to repeat")
        prev = rule[last_sym_start:]
        total_rules = high if high is not None and high > 0 else max(low, 1)
        if n_prev_rules * total_rules > MAX_REPETITION:
            raise self.fail(pos, "nested repetitions multiply to more than "
                                 f"{MAX_REPETITION} rules; reduce the repetition counts")
        n_opt = 1 if high is None else high - low
        self._spend(len(prev) * max(low - 1, 0) + n_opt * (len(prev) + 3), pos)
        if low == 0:
            del rule[last_sym_start:]
        elif low > 1:
            rule.extend(prev * (low - 1))
        last = 0
        for i in range(n_opt):
            # S'(i) ::= S S'(i-1) | (S' ::= S S' | when unbounded); the innermost has no S'.
            sid = self._generated(pos)
            tail = [sid if high is None else last] if i > 0 or high is None else []
            self.rules[sid] = [[*prev, *tail], []]
            last = sid
        if n_opt > 0:
            rule.append(last)
        return n_prev_rules * total_rules

    def check_defined(self, root: str) -> None:
        for sid, body in enumerate(self.rules):
            if body is None:
                name = self.origin[sid]
                raise GrammarError(f"grammar error at {_where(self.text, self.mentioned[sid])}: rule "
                                   f"{name!r} is used but never defined")
        if root not in self.symbols:
            raise GrammarError(f"grammar has no {root!r} rule; generation starts from '{root} ::= ...'")


def _class_matches_something(spans: list[tuple[int, int]], *, negated: bool) -> bool:
    """Whether a class matches some code point other than NUL (what token text can contain)."""
    clipped = sorted((max(lo, 1), min(hi, _MAX_CODE_POINT)) for lo, hi in spans)
    clipped = [(lo, hi) for lo, hi in clipped if lo <= hi]
    if not negated:
        return bool(clipped)
    covered = 0  # everything in [1, covered] is excluded so far
    for lo, hi in clipped:
        if lo > covered + 1:
            return True
        covered = max(covered, hi)
    return covered < _MAX_CODE_POINT


class _Analysis:
    """The checks llama.cpp makes when it builds the sampler, and the costs it would pay doing so."""

    def __init__(self, parser: _Parser) -> None:
        self.p = parser
        self.alts: list[list[Alternative]] = [body for body in parser.rules if body is not None]
        assert len(self.alts) == len(parser.rules)
        self.n = len(self.alts)

    def run(self, root: int) -> GrammarSummary:
        nullable = self._nullable()
        # llama.cpp's notion of "may be empty": the rule has an empty alternative.
        may_be_empty = [[] in alts for alts in self.alts]
        llama_edges = self._leftmost_edges(may_be_empty)
        work = self._left_recursion_work(self._order(llama_edges), llama_edges)
        true_edges = self._leftmost_edges(nullable)
        comp, order = _components(true_edges)
        # llama.cpp only ever expands rules it can reach from root; its own
        # checks above cover every rule, these two only what it will expand.
        used = self._reachable(root)
        self._refuse_growing_cycles(comp, nullable, used)
        paths = self._start_paths(comp, order, true_edges, used)
        return GrammarSummary(rules=self.n, elements=self.p.elements, start_paths=paths,
                              left_recursion_work=work)

    def _name(self, sid: int) -> str:
        return self.p.origin[sid]

    def _nullable(self) -> list[bool]:
        """Which rules can match the empty string (a fixpoint, linear in the grammar)."""
        nullable = [False] * self.n
        waiting: list[list[int]] = [[] for _ in range(self.n)]  # rule -> alternatives that mention it
        missing: list[int] = []  # per such alternative: references not yet known to be nullable
        owner: list[int] = []
        ready: list[int] = []
        for sid, alts in enumerate(self.alts):
            for alt in alts:
                if not alt:
                    ready.append(sid)
                elif min(alt) >= 0:  # references only
                    key = len(missing)
                    missing.append(len(alt))
                    owner.append(sid)
                    for ref in alt:
                        waiting[ref].append(key)
        while ready:
            sid = ready.pop()
            if nullable[sid]:
                continue
            nullable[sid] = True
            for key in waiting[sid]:
                missing[key] -= 1
                if missing[key] == 0:
                    ready.append(owner[key])
        return nullable

    def _leftmost_edges(self, empty: list[bool]) -> list[list[int]]:
        """Rule -> the rules it can begin with (one entry per occurrence), given which may be empty."""
        edges: list[list[int]] = [[] for _ in range(self.n)]
        for sid, alts in enumerate(self.alts):
            out = edges[sid]
            for alt in alts:
                for ref in alt:
                    if ref < 0:
                        break
                    out.append(ref)
                    if not empty[ref]:
                        break
        return edges

    def _order(self, edges: list[list[int]]) -> list[int]:
        """Rules, each after the rules it can begin with; a cycle is left recursion (llama.cpp's check)."""
        state = [0] * self.n  # 0 new, 1 on the path, 2 done
        order: list[int] = []
        for start in range(self.n):
            if state[start]:
                continue
            path, cursor = [start], [0]
            state[start] = 1
            while path:
                sid, i = path[-1], cursor[-1]
                if i == len(edges[sid]):
                    state[sid] = 2
                    order.append(sid)
                    path.pop()
                    cursor.pop()
                    continue
                cursor[-1] += 1
                nxt = edges[sid][i]
                if state[nxt] == 1:
                    names = " -> ".join(self._name(s) for s in [*path[path.index(nxt):], nxt])
                    raise GrammarError(
                        f"grammar is left-recursive: rule {self._name(nxt)!r} can begin with itself "
                        f"without consuming a character ({names}); llama.cpp does not support left "
                        "recursion; rewrite it with repetition (e.g. list ::= item (\",\" item)*)")
                if state[nxt] == 0:
                    state[nxt] = 1
                    path.append(nxt)
                    cursor.append(0)
        return order

    def _left_recursion_work(self, order: list[int], edges: list[list[int]]) -> int:
        """Steps (and depth) of llama.cpp's un-memoised recursive left-recursion check."""
        calls = [1] * self.n
        depth = [1] * self.n
        for sid in order:
            for nxt in edges[sid]:
                calls[sid] = min(_CAP, calls[sid] + calls[nxt])
                depth[sid] = max(depth[sid], depth[nxt] + 1)
        deepest = max(range(self.n), key=depth.__getitem__)
        if depth[deepest] > MAX_RULE_CHAIN:
            raise GrammarError(f"rule {self._name(deepest)!r} starts a chain of {depth[deepest]} rules that "
                               f"can each begin with the next (at most {MAX_RULE_CHAIN}); llama.cpp "
                               "checks such chains recursively")
        visited = [False] * self.n
        total = 0
        for sid in range(self.n):  # llama.cpp's top-level loop skips rules a previous check visited
            if visited[sid]:
                continue
            total = min(_CAP, total + calls[sid])
            if total > MAX_LEFT_RECURSION_WORK:
                raise GrammarError(
                    f"rule {self._name(sid)!r} can begin in too many ways: llama.cpp's left-recursion "
                    f"check would take more than {MAX_LEFT_RECURSION_WORK} steps (for example "
                    "r1 ::= r2 | r2 r2 ... repeated down a chain doubles it at every level)")
            todo = [sid]
            visited[sid] = True
            while todo:
                for nxt in edges[todo.pop()]:
                    if not visited[nxt]:
                        visited[nxt] = True
                        todo.append(nxt)
        return total

    def _reachable(self, root: int) -> list[bool]:
        seen = [False] * self.n
        seen[root] = True
        todo = [root]
        while todo:
            for alt in self.alts[todo.pop()]:
                for ref in alt:
                    if ref >= 0 and not seen[ref]:
                        seen[ref] = True
                        todo.append(ref)
        return seen

    def _refuse_growing_cycles(self, comp: list[int], nullable: list[bool], used: list[bool]) -> None:
        """Refuse left recursion llama.cpp misses that would grow its parse stacks without end.

        llama.cpp only treats a rule as possibly empty when it has an empty
        alternative, so ``r ::= e r "x"`` with ``e ::= f``, ``f ::= "" | "y"``
        passes its check. Expanding such a rule pushes the rest of the
        alternative (``"x"``) and reaches ``r`` again without consuming
        anything: the stack grows until memory runs out. A cycle whose every
        step is the last item of its alternative pushes nothing and is harmless
        (llama.cpp de-duplicates the stacks, so ``("a"?)*`` is accepted), so
        only cycles through a step with something after it are refused.
        """
        for sid, alts in enumerate(self.alts):
            if not used[sid]:
                continue
            for alt in alts:
                last = len(alt) - 1
                for i, ref in enumerate(alt):
                    if ref < 0:
                        break
                    if i < last and comp[ref] == comp[sid]:
                        raise GrammarError(
                            f"grammar is left-recursive: rule {self._name(ref)!r} can come back to rule "
                            f"{self._name(sid)!r} without consuming a character (through rules that may "
                            "match nothing); llama.cpp would grow its parse stacks until memory runs "
                            "out; make the repeated part consume at least one character")
                    if not nullable[ref]:
                        break

    def _start_paths(
        self, comp: list[int], order: list[int], edges: list[list[int]], used: list[bool],
    ) -> int:
        """The most chains of rules any rule can begin with (a bound on llama.cpp's parse stacks).

        llama.cpp expands a position into one stack per distinct way of reaching
        a first character, and de-duplicates them pairwise (quadratic), so a
        grammar whose rules can begin in exponentially many ways hangs it.
        Steps inside a (harmless, tail-only) cycle are not followed.
        """
        paths = [1] * self.n
        for sid in order:  # components in reverse topological order
            own = comp[sid]
            for nxt in edges[sid]:
                if comp[nxt] != own:
                    paths[sid] = min(_CAP, paths[sid] + paths[nxt])
        worst = max(range(self.n), key=lambda sid: paths[sid] if used[sid] else 0)
        if paths[worst] > MAX_START_PATHS:
            count = paths[worst] if paths[worst] < _CAP else "too many"
            raise GrammarError(
                f"rule {self._name(worst)!r} can begin in {count} different ways (chains of rules that "
                f"can come first; at most {MAX_START_PATHS}); llama.cpp keeps a parse stack for each and "
                "compares them pairwise; make the alternatives less ambiguous")
        return paths[worst]


def _components(edges: list[list[int]]) -> tuple[list[int], list[int]]:
    """Strongly connected components (Tarjan's algorithm, iterative).

    Returns each node's component number and the nodes in the order their
    components were completed, which is reverse topological: every node comes
    after the nodes of other components it has edges to.
    """
    n = len(edges)
    index = [-1] * n
    low = [0] * n
    comp = [-1] * n
    on_stack = [False] * n
    stack: list[int] = []
    order: list[int] = []
    counter = n_comp = 0
    for root in range(n):
        if index[root] >= 0:
            continue
        work = [(root, 0)]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack[root] = True
        while work:
            node, i = work[-1]
            if i < len(edges[node]):
                work[-1] = (node, i + 1)
                nxt = edges[node][i]
                if index[nxt] < 0:
                    index[nxt] = low[nxt] = counter
                    counter += 1
                    stack.append(nxt)
                    on_stack[nxt] = True
                    work.append((nxt, 0))
                elif on_stack[nxt]:
                    low[node] = min(low[node], index[nxt])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                while True:
                    member = stack.pop()
                    on_stack[member] = False
                    comp[member] = n_comp
                    order.append(member)
                    if member == node:
                        break
                n_comp += 1
    return comp, order
