"""The GBNF checker's parser: ``llama_grammar_parser::parse``, rule by rule.

Mirrors llama.cpp's recursive-descent parser token for token (rules,
alternatives, sequences, literals, character classes, token references and
groups) and builds the same rules it would, so what is accepted here llama.cpp
parses. It refuses, with a position, the pieces llama.cpp would accept but
choke on later: redefined rules, empty or NUL-only character classes, NUL in
literals, token ids outside the vocabulary, and deep nesting. The character
level is in :mod:`~kvllama.gbnf.lexer`, the rule table and repetitions in
:mod:`~kvllama.gbnf.repetition`.
"""

from __future__ import annotations

from kvllama.errors import GrammarError
from kvllama.gbnf.lexer import _WORD, _where
from kvllama.gbnf.limits import _MAX_CODE_POINT, MAX_NESTING, TERMINAL, Alternative
from kvllama.gbnf.repetition import _Rules


class _Parser(_Rules):
    """``llama_grammar_parser::parse``, over code points, building the same rules."""

    def __init__(self, text: str, n_vocab: int | None) -> None:
        super().__init__(text)
        self.n_vocab = n_vocab
        self.defined_at: dict[str, int] = {}
        self._depth = 0

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
