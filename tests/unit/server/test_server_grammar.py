"""JSON schema -> GBNF: checked by matching JSON texts against the grammar.

The tiny backtracking GBNF matcher below understands the subset the
converter emits (literals, classes, rule references, groups, alternation,
``* + ?`` and ``{m,n}``); that llama.cpp itself accepts the grammars is
checked by the real-model server tests.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import pytest

from kvllama.errors import InvalidRequestError
from kvllama.server.grammar import JSON_OBJECT_GRAMMAR, json_schema_grammar, literal

_TOKEN = re.compile(r'\s*("(?:\\.|[^"\\])*"|\[(?:\\.|[^\]\\])*\]|[A-Za-z0-9-]+|\{\d*,?\d*\}|[()|*+?])')


def _unescape(text: str) -> str:
    return re.sub(r"\\(x[0-9a-fA-F]{2}|.)", lambda m: chr(int(m.group(1)[1:], 16)) if m.group(1)[0] == "x"
                  else {"n": "\n", "t": "\t", "r": "\r"}.get(m.group(1), m.group(1)), text)


class Grammar:
    def __init__(self, text: str) -> None:
        self.rules: dict[str, Any] = {}
        for line in text.strip().splitlines():
            name, body = line.split("::=", 1)
            self._toks = [t for t in _TOKEN.findall(body)]
            self._pos = 0
            self.rules[name.strip()] = self._alt()
            assert self._pos == len(self._toks), f"unparsed tail in {line!r}"

    def _alt(self) -> Any:
        options = [self._seq()]
        while self._peek() == "|":
            self._pos += 1
            options.append(self._seq())
        return ("alt", options)

    def _seq(self) -> Any:
        items = []
        while self._peek() not in (None, "|", ")"):
            items.append(self._postfix(self._atom()))
        return ("seq", items)

    def _atom(self) -> Any:
        tok = self._toks[self._pos]
        self._pos += 1
        if tok == "(":
            node = self._alt()
            assert self._toks[self._pos] == ")"
            self._pos += 1
            return node
        if tok.startswith('"'):
            return ("lit", _unescape(tok[1:-1]))
        if tok.startswith("["):
            inner = tok[1:-1]
            negated = inner.startswith("^")
            chars = _unescape(inner[1:] if negated else inner)
            ranges = [(chars[i], chars[i + 2]) if i + 2 < len(chars) and chars[i + 1] == "-" else None
                      for i in range(len(chars))]
            spans, i = [], 0
            while i < len(chars):
                if ranges[i] is not None:
                    spans.append(ranges[i])
                    i += 3
                else:
                    spans.append((chars[i], chars[i]))
                    i += 1
            return ("cls", negated, spans)
        return ("ref", tok)

    def _postfix(self, node: Any) -> Any:
        tok = self._peek()
        bounds = {"*": (0, None), "+": (1, None), "?": (0, 1)}.get(tok or "")
        if tok and tok.startswith("{"):
            low, _, high = tok[1:-1].partition(",")
            bounds = (int(low), int(low) if "," not in tok else (int(high) if high else None))
        if bounds is None:
            return node
        self._pos += 1
        return ("rep", node, *bounds)

    def _peek(self) -> str | None:
        return self._toks[self._pos] if self._pos < len(self._toks) else None

    def matches(self, text: str) -> bool:
        return any(end == len(text) for end in self._match(self.rules["root"], text, 0))

    def _match(self, node: Any, s: str, i: int) -> Iterator[int]:
        kind = node[0]
        if kind == "lit":
            if s.startswith(node[1], i):
                yield i + len(node[1])
        elif kind == "cls":
            if i < len(s) and any(lo <= s[i] <= hi for lo, hi in node[2]) != node[1]:
                yield i + 1
        elif kind == "ref":
            yield from self._match(self.rules[node[1]], s, i)
        elif kind == "alt":
            for option in node[1]:
                yield from self._match(option, s, i)
        elif kind == "seq":
            yield from self._seq_match(node[1], s, i)
        else:
            yield from self._rep_match(node[1], node[2], node[3], s, i, 0)

    def _seq_match(self, items: list[Any], s: str, i: int) -> Iterator[int]:
        if not items:
            yield i
            return
        for mid in self._match(items[0], s, i):
            yield from self._seq_match(items[1:], s, mid)

    def _rep_match(self, node: Any, low: int, high: int | None, s: str, i: int, n: int) -> Iterator[int]:
        if high is None or n < high:
            for mid in self._match(node, s, i):
                if mid > i:
                    yield from self._rep_match(node, low, high, s, mid, n + 1)
        if n >= low:
            yield i


def dumps(value: Any, pretty: bool = False) -> str:
    return json.dumps(value, indent=2 if pretty else None, ensure_ascii=False)


PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 8},
        "age": {"type": "integer"},
        "nick": {"type": "string"},
        "tags": {"type": "array", "items": {"enum": ["a", "b"]}, "maxItems": 2},
        "score": {"type": ["number", "null"]},
    },
    "required": ["name", "age"],
}


@pytest.mark.parametrize("value", [
    {"name": "Ann", "age": 3},
    {"name": "Ann", "age": -3, "nick": "x\"y", "tags": ["a", "b"], "score": 1.5e3},
    {"name": "", "age": 0, "tags": [], "score": None},
    {"name": "Bob", "age": 40, "score": -0.25},
])
def test_schema_grammar_accepts_valid_instances(value):
    g = Grammar(json_schema_grammar(PERSON))
    assert g.matches(dumps(value)) and g.matches(dumps(value, pretty=True))


@pytest.mark.parametrize("value", [
    {"age": 3},                                  # required property missing
    {"name": "Ann", "age": 3.5},                 # integer expected
    {"name": "Ann", "age": "3"},
    {"name": "Annabelle-Lee", "age": 3},         # longer than maxLength
    {"name": "Ann", "age": 3, "tags": ["c"]},    # not in the enum
    {"name": "Ann", "age": 3, "tags": ["a", "a", "b"]},  # more than maxItems
    {"name": "Ann", "age": 3, "other": 1},       # undeclared property
    {"age": 3, "name": "Ann"},                   # declared order is kept
])
def test_schema_grammar_rejects_invalid_instances(value):
    assert not Grammar(json_schema_grammar(PERSON)).matches(dumps(value))


def test_all_optional_properties_need_no_leading_comma():
    schema = {"type": "object", "properties": {"a": {"type": "boolean"}, "b": {"type": "null"}}}
    g = Grammar(json_schema_grammar(schema))
    for good in ({}, {"a": True}, {"b": None}, {"a": False, "b": None}):
        assert g.matches(dumps(good)), good
    assert not g.matches('{, "b": null}') and not g.matches('{"a": true,}')


def test_refs_recursion_anyof_and_const():
    schema = {
        "$defs": {"Node": {"type": "object", "properties": {
            "v": {"const": "x"}, "kids": {"type": "array", "items": {"$ref": "#/$defs/Node"}}},
            "required": ["v", "kids"]}},
        "anyOf": [{"$ref": "#/$defs/Node"}, {"type": "boolean"}],
    }
    g = Grammar(json_schema_grammar(schema))
    assert g.matches(dumps({"v": "x", "kids": [{"v": "x", "kids": []}]}))
    assert g.matches("true")
    assert not g.matches(dumps({"v": "y", "kids": []}))


def test_min_items_and_min_length():
    g = Grammar(json_schema_grammar({"type": "array", "items": {"type": "string", "minLength": 2},
                                     "minItems": 1}))
    assert g.matches('["ab"]') and g.matches('["ab", "cde"]')
    assert not g.matches("[]") and not g.matches('["a"]')


def test_json_object_grammar_takes_any_object_and_nothing_else():
    g = Grammar(JSON_OBJECT_GRAMMAR)
    assert g.matches(dumps({"a": [1, {"b": None}], "c": "é\n"}))
    assert g.matches("{}")
    assert not g.matches("[1]") and not g.matches('"x"') and not g.matches("{'a': 1}")


def test_literal_escapes_for_gbnf():
    assert literal('a"b\\c') == r'"\"a\\\"b\\\\c\""'
    assert Grammar("root ::= " + literal('a"b')).matches('"a\\"b"')


@pytest.mark.parametrize(("schema", "where"), [
    ({"type": "object", "properties": {"x": {"type": "date"}}}, "schema.properties.x"),
    ({"$ref": "http://example.com/s.json"}, "schema"),
    ({"$ref": "#/$defs/Missing"}, "schema"),
    ({"enum": []}, "schema"),
])
def test_unsupported_schemas_are_clear_errors(schema, where):
    with pytest.raises(InvalidRequestError, match=re.escape(where)):
        json_schema_grammar(schema)


def test_array_bounds_with_and_without_a_minimum():
    g = Grammar(json_schema_grammar({"type": "array", "items": {"type": "integer"}, "maxItems": 2}))
    assert g.matches("[]") and g.matches("[1]") and g.matches("[1, 2]")
    assert not g.matches("[1, 2, 3]") and not g.matches("[,]")
    g = Grammar(json_schema_grammar({"type": "array", "items": {"type": "integer"}, "minItems": 2}))
    assert g.matches("[1, 2]") and g.matches("[1, 2, 3, 4]")
    assert not g.matches("[]") and not g.matches("[1]")


@pytest.mark.parametrize(("schema", "where"), [
    ({"type": "string", "minLength": 3, "maxLength": 2}, "schema: minLength (3) is greater than maxLength"),
    ({"type": "array", "minItems": 3, "maxItems": 1}, "schema: minItems (3) is greater than maxItems"),
    ({"type": "string", "minLength": "3"}, "schema.minLength must be a non-negative integer"),
    ({"type": "string", "maxLength": False}, "schema.maxLength must be a non-negative integer"),
    ({"properties": {"a": {"type": "array", "maxItems": -1}}}, "schema.properties.a.maxItems"),
    ({"items": {"type": "array", "maxItems": 2001}, "type": "array"}, "schema.items.maxItems is 2001"),
])
def test_bounds_are_checked_before_they_become_repetitions(schema, where):
    with pytest.raises(InvalidRequestError, match=re.escape(where)):
        json_schema_grammar(schema)


def test_every_generated_grammar_passes_the_gbnf_checker():
    from kvllama.gbnf import check_grammar

    for schema in (PERSON, {"type": "array", "maxItems": 2000}, {"type": "string", "maxLength": 2000},
                   {"type": "object", "properties": {f"k{i}": {"type": "string"} for i in range(300)}}):
        check_grammar(json_schema_grammar(schema))
