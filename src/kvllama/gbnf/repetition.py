"""The rules the GBNF checker builds, their element budget, and repetition unrolling.

llama.cpp turns every ``{m,n}``, ``*``, ``+`` and ``?`` into copies of the
repeated item and helper rules (``handle_repetitions``), which is how a short
grammar can grow into hundreds of millions of elements. This module holds the
rule table, counts elements exactly as llama.cpp would build them against
:data:`~kvllama.gbnf.limits.MAX_GRAMMAR_ELEMENTS`, and parses and unrolls
repetitions the same way, refusing bounds llama.cpp mishandles (``{2,1}``,
bounds over :data:`~kvllama.gbnf.limits.MAX_REPETITION`).
"""

from __future__ import annotations

from kvllama.gbnf.lexer import _DIGITS, _Lexer
from kvllama.gbnf.limits import MAX_GRAMMAR_ELEMENTS, MAX_REPETITION, Alternative


class _Rules(_Lexer):
    """The symbol and rule tables, the element budget, and ``handle_repetitions``."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.symbols: dict[str, int] = {}
        # Per symbol id: the rule's alternatives (None until defined), its user-visible
        # rule name, and where it was first mentioned (for "undefined" errors).
        self.rules: list[list[Alternative] | None] = []
        self.origin: list[str] = []
        self.mentioned: list[int] = []
        self.elements = 0

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
