"""Grammars for the GBNF checker's tests, shared with the real-llama.cpp check.

``VALID`` are grammars the checker must accept (and llama.cpp must parse);
``schema_grammars()`` adds every grammar the server builds for a spread of
JSON schemas; ``gbnf_texts`` is a hypothesis strategy for GBNF-ish text,
mostly well-formed so that many examples get past the parser.
"""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

from kvllama.server.grammar import JSON_OBJECT_GRAMMAR, json_schema_grammar

VALID: dict[str, str] = {
    "literal": 'root ::= "hello"',
    "alternatives": 'root ::= "yes" | "no" | "maybe"',
    "alternatives over lines": 'root ::= "a" |\n  "b" |\n  "c"\n',
    "rules and refs": 'root ::= greeting " " name\ngreeting ::= "hi" | "hello"\nname ::= [A-Z] [a-z]+\n',
    "forward and recursive refs":
        'root ::= list\nlist ::= "[" (item ("," item)*)? "]"\nitem ::= [0-9]+ | list\n',
    "star plus question": 'root ::= "a"* "b"+ "c"?',
    "bounded repetitions": 'root ::= [0-9]{3} "-" [0-9]{2,4} "-" [a-z]{0,8} "!"{1,}',
    "repetition at the limit": 'root ::= [a-z]{0,2000}',
    "repetition of a group": 'root ::= ("ab" | "c"){2,5}',
    "spaces inside braces": 'root ::= "x"{ 1 , 3 }',
    "char classes": 'root ::= [a-zA-Z_] [^\\n"\\\\] [\\x20-\\x7E] [-a] [a-] [\\]\\[] [\\-]',
    "negated ranges": 'root ::= [^\\x00-\\x1F\\x7F]+',
    "any char": 'root ::= "<" .* ">"',
    "escapes": 'root ::= "\\t\\r\\n\\\\\\"\\[\\]\\-" "\\x41\\u00e9\\U0001F600"',
    "non-ascii literals": 'root ::= "héllo wörld 你好 😀" [à-ÿ]',
    "comments": '# leading comment\nroot ::= "a" # trailing\n# between\n\nitem ::= "b" # unused rule\n',
    "crlf line endings": 'root ::= a\r\na ::= "x" | "y"\r\n',
    "nested groups": 'root ::= ((("a" | "b") "c")+ ("d" ("e" | ("f" "g")*)?)?)',
    "groups over lines": 'root ::= (\n  "a"\n  | "b"\n  "c"\n)',
    "empty alternative": 'root ::= "a" opt\nopt ::= "b" |\n',
    "empty group alternative": 'root ::= ("x" | ) "y"',
    "hidden left recursion llama.cpp accepts": 'root ::= ("a"?)* "b"',
    "token id": 'root ::= <[2]> "x" !<[3]>',
    "deep nesting": "root ::= " + "(" * 32 + '"a"' + ")" * 32,
    "wide alternation": "root ::= " + " | ".join(f'"w{i}"' for i in range(500)),
    "many rules":
        "root ::= r0\n" + "".join(f'r{i} ::= "{i}" r{i + 1}\n' for i in range(300)) + 'r300 ::= "."\n',
    "json object grammar": JSON_OBJECT_GRAMMAR,
    "llama.cpp json.gbnf": r'''
root   ::= object
value  ::= object | array | string | number | ("true" | "false" | "null") ws

object ::=
  "{" ws (
            string ":" ws value
    ("," ws string ":" ws value)*
  )? "}" ws

array  ::=
  "[" ws (
            value
    ("," ws value)*
  )? "]" ws

string ::=
  "\"" (
    [^"\\\x7F\x00-\x1F] |
    "\\" (["\\bfnrt] | "u" [0-9a-fA-F]{4}) # escapes
  )* "\"" ws

number ::= ("-"? ([0-9] | [1-9] [0-9]{0,15})) ("." [0-9]+)? ([eE] [-+]? [0-9] [1-9]{0,15})? ws

# Optional space: by convention, applied in this grammar after literal chars when allowed
ws ::= | " " | "\n" [ \t]{0,20}
''',
    "llama.cpp arithmetic.gbnf": r'''
root  ::= (expr "=" ws term "\n")+
expr  ::= term ([-+*/] term)*
term  ::= ident | num | "(" ws expr ")" ws
ident ::= [a-z] [a-z0-9_]* ws
num   ::= [0-9]+ ws
ws    ::= [ \t\n]*
''',
    "llama.cpp list.gbnf": r'''
root ::= item+

# Excludes various line break characters
item ::= "- " [^\r\n\x0b\x0c\x85\u2028\u2029]+ "\n"
''',
}

SCHEMAS: dict[str, Any] = {
    "any": {},
    "scalars": {"type": "object", "properties": {
        "s": {"type": "string"}, "n": {"type": "number"}, "i": {"type": "integer"},
        "b": {"type": "boolean"}, "z": {"type": "null"}}},
    "person": {
        "type": "object",
        "properties": {
            "name": {"type": "string", "minLength": 1, "maxLength": 8},
            "age": {"type": "integer"},
            "tags": {"type": "array", "items": {"enum": ["a", "b"]}, "maxItems": 2},
            "score": {"type": ["number", "null"]},
        },
        "required": ["name", "age"],
    },
    "bounds at the limit": {"type": "object", "properties": {
        "long": {"type": "string", "maxLength": 2000},
        "many": {"type": "array", "items": {"type": "integer"}, "minItems": 1, "maxItems": 2000},
        "exact": {"type": "string", "minLength": 5, "maxLength": 5},
        "min only": {"type": "string", "minLength": 3},
        "none": {"type": "array", "maxItems": 0},
        "any count up to the limit": {"type": "array", "items": {"type": "string"}, "maxItems": 2000}}},
    "pydantic refs": {
        "$defs": {"Node": {"type": "object", "properties": {
            "v": {"const": "x"}, "kids": {"type": "array", "items": {"$ref": "#/$defs/Node"}}},
            "required": ["v", "kids"]}},
        "anyOf": [{"$ref": "#/$defs/Node"}, {"type": "boolean"}],
    },
    "closed empty object": {"type": "object", "properties": {}, "additionalProperties": False},
    "all optional": {"type": "object", "properties": {k: {"type": "boolean"} for k in "abcdefgh"}},
    "many properties": {"type": "object", "properties": {f"p{i}": {"type": "string"} for i in range(200)},
                        "required": [f"p{i}" for i in range(0, 200, 3)]},
    "enum of odd strings": {"enum": ['quote"', "back\\slash", "new\nline", "tab\t", "é😀", 1, None, True]},
    "nested arrays": {"type": "array", "items": {"type": "array", "items": {
        "type": "array", "items": {"type": "string", "maxLength": 3}, "maxItems": 3}, "minItems": 1}},
    "oneOf objects": {"oneOf": [
        {"type": "object", "properties": {"kind": {"const": "a"}, "x": {"type": "integer"}},
         "required": ["kind"]},
        {"type": "object", "properties": {"kind": {"const": "b"}, "y": {"type": "string"}},
         "required": ["kind"]}]},
    "float bounds": {"type": "string", "minLength": 2.0, "maxLength": 4.0},
}


def schema_grammars() -> dict[str, str]:
    return {f"schema: {name}": json_schema_grammar(schema) for name, schema in SCHEMAS.items()}


_NAMES = st.sampled_from(["root", "a", "b", "item", "x-1"])
_CHARS = st.sampled_from(["a", "z", "0", " ", "é", "😀", "\\n", "\\t", "\\\\", '\\"', "\\x41", "\\x00",
                          "\\u00e9", "\\uD800", "\\U0001F600", "\\U00110000", "\\q", "]", "-", "^", "\\"])
_LITERAL = st.lists(_CHARS, max_size=4).map(lambda cs: '"' + "".join(c for c in cs if c not in ']-^') + '"')
_CLASS = st.tuples(st.booleans(), st.lists(st.tuples(_CHARS, st.one_of(st.none(), _CHARS)), max_size=3)).map(
    lambda t: "[" + ("^" if t[0] else "") + "".join(a + ("" if b is None else "-" + b) for a, b in t[1]) + "]"
)
_REPEAT = st.sampled_from(["", "", "", "*", "+", "?", "{2}", "{0,3}", "{1,}", "{3,1}", "{0,2000}",
                           "{2001}", "{", "{,2}", "{99999999999999999999999}"])
_JUNK = st.sampled_from(["(", ")", "|", "::=", "\n", "#c\n", "<[5]>", "!<[1]>", "<x>", "<[", ".", "{}", ":",
                         "\r"])


def _expr(depth: int) -> st.SearchStrategy[str]:
    atom = st.one_of(_LITERAL, _CLASS, _NAMES, st.just("."))
    if depth > 0:
        atom = st.one_of(atom, _expr(depth - 1).map(lambda e: f"({e})"))
    item = st.tuples(atom, _REPEAT).map("".join)
    sequence = st.lists(item, min_size=1, max_size=4).map(" ".join)
    return st.lists(sequence, min_size=1, max_size=3).map(" | ".join)


_RULE = st.tuples(_NAMES, _expr(2)).map(lambda t: f"{t[0]} ::= {t[1]}")
_GRAMMAR = st.lists(_RULE, min_size=1, max_size=5).map("\n".join)


@st.composite
def gbnf_texts(draw: st.DrawFn) -> str:
    """Mostly well-formed grammars; some with junk spliced in at random places."""
    text = draw(_GRAMMAR)
    for _ in range(draw(st.integers(0, 3))):
        at = draw(st.integers(0, len(text)))
        text = text[:at] + draw(st.one_of(_JUNK, st.text(max_size=3))) + text[at:]
    return text


_GOOD_CHARS = st.sampled_from(["a", "z", "0", " ", "é", "😀", "\\n", "\\t", "\\\\", '\\"', "\\x41",
                               "\\u00e9", "\\U0001F600", "\\[", "\\]", "\\-", "-"])
_GOOD_LITERAL = st.lists(_GOOD_CHARS, min_size=1, max_size=4).map(lambda cs: '"' + "".join(cs) + '"')
_GOOD_CLASS = st.tuples(
    st.booleans(),
    st.lists(st.sampled_from(["a-z", "0-9", "_", "\\n", "é", "\\x20-\\x7E", "\\]", "😀-😂"]),
             min_size=1, max_size=3),
).map(lambda t: "[" + ("^" if t[0] else "") + "".join(t[1]) + "]")
_GOOD_REPEAT = st.sampled_from(["", "", "", "*", "+", "?", "{2}", "{0,3}", "{1,}", "{2,5}", "{0,40}"])


def _good_expr(names: list[str], depth: int) -> st.SearchStrategy[str]:
    atom = st.one_of(_GOOD_LITERAL, _GOOD_CLASS, st.just("."), *([st.sampled_from(names)] if names else []))
    if depth > 0:
        atom = st.one_of(atom, _good_expr(names, depth - 1).map(lambda e: f"({e})"))
    item = st.tuples(atom, _GOOD_REPEAT).map("".join)
    sequence = st.lists(item, min_size=1, max_size=4).map(" ".join)
    return st.lists(sequence, min_size=1, max_size=3).map(" | ".join)


@st.composite
def plausible_grammars(draw: st.DrawFn) -> str:
    """Grammars built only from valid pieces, every referenced rule defined once: most pass."""
    names = ["root", *draw(st.lists(st.sampled_from(["a", "b", "item-2"]), unique=True, max_size=3))]
    rules = [f"{name} ::= {draw(_good_expr(names, 2))}" for name in names]
    return "\n".join(rules) + draw(st.sampled_from(["", "\n", "\r\n"]))
