"""The GBNF checker's character level: raw-text checks, positions and tokens.

Everything that looks at the grammar one character at a time, as
``llama_grammar_parser``'s helpers do (``parse_space``, ``parse_name``,
``parse_int``, ``parse_hex``, ``parse_char``), plus the checks on the raw text
that must run before any parsing (empty text, lone surrogates, NUL, size).
Kept apart from the grammar structure so the error positions ("line L,
column C") and the escape rules live in one place.
"""

from __future__ import annotations

import re

from kvllama.errors import GrammarError
from kvllama.gbnf.limits import _MAX_CODE_POINT, MAX_GRAMMAR_BYTES

_SURROGATE = re.compile("[\ud800-\udfff]")
_WORD = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-")
_DIGITS = frozenset("0123456789")
_HEX = frozenset("0123456789abcdefABCDEF")
_SIMPLE_ESCAPES = {"t": 9, "r": 13, "n": 10, "\\": 92, '"': 34, "[": 91, "]": 93, "-": 45}


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



class _Lexer:
    """The character-level helpers of ``llama_grammar_parser``, over code points."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.n = len(text)
        self._rule = ""

    # --- errors -------------------------------------------------------------

    def fail(self, pos: int, message: str) -> GrammarError:
        rule = f" (rule {self._rule!r})" if self._rule else ""
        return GrammarError(f"grammar error at {_where(self.text, pos)}{rule}: {message}")

    def _at(self, pos: int) -> str:
        return self.text[pos] if pos < self.n else ""

    def _excerpt(self, pos: int) -> str:
        return repr(self.text[pos : pos + 20]) if pos < self.n else "end of input"

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
