"""JSON schema -> GBNF, for OpenAI's ``response_format``.

Covers what structured-output clients send in practice: objects with
properties (declared order kept, properties outside ``required`` may be left
out), strings (with min/max length), numbers, integers, booleans, null,
arrays (with min/max items), ``enum`` and ``const``, ``anyOf``/``oneOf``,
type lists and local ``$ref`` into ``$defs``/``definitions`` (what pydantic
emits, recursion included). Keywords that only narrow values further
(``pattern``, ``format``, ``minimum``...) are not enforced. Anything else is
an :class:`InvalidRequestError` naming the schema path, never a silently
unconstrained output.

Whitespace between tokens is bounded (at most one newline plus 20 indent
characters per gap) so a small model cannot wander off into blank lines.

Every keyword's value is checked before it shapes the grammar: length and
item bounds must be non-negative integers (not booleans), minimum at most
maximum, and at most :data:`~kvllama.gbnf.MAX_REPETITION` (llama.cpp
unrolls ``{m,n}`` into rules, so a bound of 10^8, or a minimum above the
maximum, would exhaust memory); schemas nest at most :data:`MAX_SCHEMA_DEPTH`
deep. The finished grammar goes through :func:`~kvllama.gbnf.check_grammar`
here too, so a schema whose grammar is too big is refused naming the schema.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from kvllama.errors import GrammarError, InvalidRequestError
from kvllama.gbnf import MAX_REPETITION, check_grammar

# Nested schemas (objects in arrays in objects...), $ref hops included; the
# converter recurses once per level.
MAX_SCHEMA_DEPTH = 64
# Subschemas converted (a subschema under a type list counts once per type):
# bounds the converter's work whatever the shape; a schema this large would
# not fit in a grammar of MAX_GRAMMAR_BYTES anyway.
MAX_SCHEMA_NODES = 20_000
# Properties of one object: more could not fit in a grammar of MAX_GRAMMAR_BYTES
# anyway, and the member chain costs time quadratic in their number.
MAX_PROPERTIES = 2000

_PRIMITIVES = r'''
ws ::= | " " | "\n" [ \t]{0,20}
char ::= [^"\\\x7F\x00-\x1F] | "\\" (["\\/bfnrt] | "u" [0-9a-fA-F]{4})
string ::= "\"" char* "\""
integral ::= "0" | [1-9] [0-9]{0,15}
integer ::= "-"? integral
number ::= "-"? integral ("." [0-9]+)? ([eE] [-+]? [0-9]+)?
boolean ::= "true" | "false"
null ::= "null"
value ::= object | array | string | number | boolean | null
member ::= string ws ":" ws value ws
object ::= "{" ws ( member ( "," ws member )* )? "}"
array ::= "[" ws ( value ws ( "," ws value ws )* )? "]"
'''.strip()

JSON_OBJECT_GRAMMAR = f"root ::= object\n{_PRIMITIVES}\n"

_SCALARS = {"string": "string", "number": "number", "integer": "integer", "boolean": "boolean",
            "null": "null"}


def json_schema_grammar(schema: Mapping[str, Any]) -> str:
    """A GBNF grammar whose language is the JSON texts valid under ``schema``."""
    if not isinstance(schema, Mapping):
        raise InvalidRequestError("response_format.json_schema.schema must be a JSON object")
    conv = _Converter(schema)
    root = conv.visit(schema, "root", "schema")
    # Primitives first: llama.cpp counts a rule a repetition group mentions for the first time as
    # part of the group, so ( "," ws item ){0,1999} would pass its 2000-rule limit if ws came later.
    lines = [_PRIMITIVES, f"root ::= {root}", *(f"{n} ::= {body}" for n, body in conv.rules.items())]
    grammar = "\n".join(lines) + "\n"
    try:
        check_grammar(grammar)
    except GrammarError as exc:
        raise InvalidRequestError(f"schema: the grammar this JSON schema needs is refused: {exc}") from None
    return grammar


def literal(value: Any) -> str:
    """A GBNF string literal matching the JSON text of ``value`` exactly."""
    text = json.dumps(value, ensure_ascii=False)
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


class _Converter:
    def __init__(self, root: Mapping[str, Any]) -> None:
        self.rules: dict[str, str] = {}
        self._root = root
        self._refs: dict[str, str] = {}
        self._depth = 0
        self._visits = 0
        self._suffix: dict[str, int] = {}

    def visit(self, schema: Any, name: str, where: str) -> str:
        """A GBNF expression for ``schema``; helper rules are added under names derived from ``name``."""
        self._depth += 1
        self._visits += 1
        try:
            if self._depth > MAX_SCHEMA_DEPTH:
                raise InvalidRequestError(f"{where}: the schema nests more than {MAX_SCHEMA_DEPTH} levels")
            if self._visits > MAX_SCHEMA_NODES:
                raise InvalidRequestError(f"{where}: the schema is too large (more than {MAX_SCHEMA_NODES} "
                                          "subschemas)")
            return self._visit(schema, name, where)
        finally:
            self._depth -= 1

    def _visit(self, schema: Any, name: str, where: str) -> str:
        if schema is True or schema == {}:
            return "value"
        if not isinstance(schema, Mapping):
            raise InvalidRequestError(f"{where}: a JSON schema must be an object")
        if "$ref" in schema:
            return self._ref(schema["$ref"], where)
        if "const" in schema:
            return literal(schema["const"])
        if "enum" in schema:
            values = _list(schema, "enum", where)
            return self._alternatives(name, [literal(v) for v in values], f"{where}.enum")
        for key in ("anyOf", "oneOf"):
            if key in schema:
                options = [self.visit(s, f"{name}-{i}", f"{where}.{key}[{i}]")
                           for i, s in enumerate(_list(schema, key, where))]
                return self._alternatives(name, options, f"{where}.{key}")
        if "allOf" in schema and len(_list(schema, "allOf", where)) == 1:
            return self.visit(schema["allOf"][0], name, f"{where}.allOf[0]")
        kind = schema.get("type")
        if isinstance(kind, list):
            if not kind or not all(isinstance(k, str) for k in kind):
                raise InvalidRequestError(f"{where}.type: a list of types must be non-empty type names")
            options = [self.visit({**schema, "type": k}, f"{name}-{k}", where) for k in dict.fromkeys(kind)]
            return self._alternatives(name, options, where)
        if kind is not None and not isinstance(kind, str):
            raise InvalidRequestError(f"{where}.type must be a type name or a list of them")
        return self._typed(schema, kind, name, where)

    def _typed(self, schema: Mapping[str, Any], kind: Any, name: str, where: str) -> str:
        if kind == "object" or (kind is None and "properties" in schema):
            return self._object(schema, name, where)
        if kind == "array":
            return self._array(schema, name, where)
        if kind == "string" and ("minLength" in schema or "maxLength" in schema):
            low, high = _bounds(schema, "minLength", "maxLength", where)
            return self._add(name, f'"\\"" char{{{low},{"" if high is None else high}}} "\\""')
        if kind in _SCALARS:
            return _SCALARS[kind]
        if kind is None:
            return "value"
        raise InvalidRequestError(f"{where}: unsupported JSON schema type {kind!r}")

    def _object(self, schema: Mapping[str, Any], name: str, where: str) -> str:
        props = schema.get("properties") or {}
        if not isinstance(props, Mapping):
            raise InvalidRequestError(f"{where}.properties must be an object")
        if len(props) > MAX_PROPERTIES:
            raise InvalidRequestError(f"{where}.properties has {len(props)} properties; at most "
                                      f"{MAX_PROPERTIES} are supported")
        if not props:
            closed = schema.get("additionalProperties") is False
            return self._add(name, '"{" ws "}"') if closed else "object"
        required = schema.get("required") or []
        if not isinstance(required, list) or not all(isinstance(k, str) for k in required):
            raise InvalidRequestError(f"{where}.required must be a list of property names")
        required = set(required)
        rule = self._add(name, "")  # reserved now: its unique name also keys the member rules
        items = []
        for key, sub in props.items():
            value = self.visit(sub, f"{rule}-{key}", f"{where}.properties.{key}")
            items.append((f'{literal(key)} ws ":" ws {value} ws', key in required))
        self.rules[rule] = f'"{{" ws {self._members(items, rule)} "}}"'
        return rule

    def _members(self, items: list[tuple[str, bool]], name: str) -> str:
        """The members in order; optional ones may be skipped, commas only between emitted ones.

        Built from the last member back (a loop, not recursion, so an object
        with thousands of properties cannot exhaust Python's stack); the
        "nothing emitted yet" variant of member i exists only while every
        member before it is optional.
        """
        first_required = next((i for i, (_, req) in enumerate(items) if req), len(items))
        after = {False: "", True: ""}  # members i+1.. (after something / nothing emitted yet)
        for i in reversed(range(len(items))):
            member, is_required = items[i]
            here: dict[bool, str] = {}
            for first in (False, True) if i <= first_required else (False,):
                comma = "" if first else '"," ws '
                body = f"{comma}{member} {after[False]}".strip()
                if not is_required:
                    rest = after[first]
                    alternatives = f"{body} | {rest}" if rest else f"( {body} )?"
                    body = self._add(f"{name}-m{i}{'f' if first else ''}", alternatives)
                here[first] = body
            after = {False: here[False], True: here.get(True, "")}
        return after[True]

    def _array(self, schema: Mapping[str, Any], name: str, where: str) -> str:
        item = self.visit(schema.get("items", {}), f"{name}-item", f"{where}.items")
        low, high = _bounds(schema, "minItems", "maxItems", where)
        more_high = "" if high is None else str(max(high - 1, 0))
        if high == 0:
            return self._add(name, '"[" ws "]"')
        more = f'( "," ws {item} ws ){{{max(low - 1, 0)},{more_high}}}'
        full = f'"[" ws {item} ws {more} "]"'
        # The empty array as its own alternative, not ( ... )?: llama.cpp counts the rules an
        # unrolled repetition makes inside a group against its 2000-rule limit for the group.
        return self._add(name, full if low >= 1 else f'"[" ws "]" | {full}')

    def _ref(self, ref: Any, where: str) -> str:
        match = re.fullmatch(r"#/(\$defs|definitions)/([^/]+)", ref) if isinstance(ref, str) else None
        if match is None:
            raise InvalidRequestError(f"{where}: only local $ref into $defs/definitions is supported")
        if ref not in self._refs:
            defs = self._root.get(match.group(1)) or {}
            target = defs.get(match.group(2)) if isinstance(defs, Mapping) else None
            if target is None:
                raise InvalidRequestError(f"{where}: $ref {ref!r} points nowhere")
            rule = self._unique(f"ref-{match.group(2)}")
            self._refs[ref] = rule
            self.rules[rule] = "value"  # placeholder, so recursion finds the name
            self.rules[rule] = self.visit(target, rule, ref)
        return self._refs[ref]

    def _alternatives(self, name: str, options: list[str], where: str) -> str:
        if not options:
            raise InvalidRequestError(f"{where}: an empty enum/anyOf matches nothing")
        return options[0] if len(options) == 1 else self._add(name, " | ".join(options))

    def _add(self, name: str, body: str) -> str:
        rule = self._unique(name)
        self.rules[rule] = body
        return rule

    def _unique(self, name: str) -> str:
        # Cut to 64 characters: names embed their parents' property keys, which can be long.
        base = re.sub(r"[^A-Za-z0-9-]+", "-", name[:200])[:64].strip("-") or "r"
        if not base.startswith(("root", "ref-")):
            base = f"root-{base}"
        # Numbered from where the last name with this base stopped: many keys
        # that clean to the same base must not make naming quadratic.
        n = self._suffix.get(base, 1)
        rule = base if n == 1 else f"{base}{n}"
        while rule in self.rules or rule == "root":
            n += 1
            rule = f"{base}{n}"
        self._suffix[base] = n
        return rule


def _list(schema: Mapping[str, Any], key: str, where: str) -> list[Any]:
    value = schema[key]
    if not isinstance(value, list):
        raise InvalidRequestError(f"{where}.{key} must be a list")
    return value


def _bounds(schema: Mapping[str, Any], low_key: str, high_key: str, where: str) -> tuple[int, int | None]:
    """(minimum, maximum or None) of a length or item count, checked before it becomes a {m,n}."""
    low = _bound(schema, low_key, where)
    high = _bound(schema, high_key, where)
    low = 0 if low is None else low
    if high is not None and low > high:
        raise InvalidRequestError(f"{where}: {low_key} ({low}) is greater than {high_key} ({high}); "
                                  "no value could match")
    return low, high


def _bound(schema: Mapping[str, Any], key: str, where: str) -> int | None:
    if key not in schema:
        return None
    value = schema[key]
    # JSON Schema counts 3.0 as an integer; booleans are not numbers here.
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidRequestError(f"{where}.{key} must be a non-negative integer, got {value!r}")
    if value > MAX_REPETITION:
        raise InvalidRequestError(f"{where}.{key} is {value}; at most {MAX_REPETITION} is supported "
                                  "(the grammar engine unrolls bounded repetitions)")
    return value
