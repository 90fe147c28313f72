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
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from kvllama.errors import InvalidRequestError

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
    lines = [f"root ::= {root}", *(f"{n} ::= {body}" for n, body in conv.rules.items()), _PRIMITIVES]
    return "\n".join(lines) + "\n"


def literal(value: Any) -> str:
    """A GBNF string literal matching the JSON text of ``value`` exactly."""
    text = json.dumps(value, ensure_ascii=False)
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


class _Converter:
    def __init__(self, root: Mapping[str, Any]) -> None:
        self.rules: dict[str, str] = {}
        self._root = root
        self._refs: dict[str, str] = {}
        # (object rule name, member index, nothing emitted yet) -> expression; keeps the grammar linear.
        self._tails: dict[tuple[str, int, bool], str] = {}

    def visit(self, schema: Any, name: str, where: str) -> str:
        """A GBNF expression for ``schema``; helper rules are added under names derived from ``name``."""
        if schema is True or schema == {}:
            return "value"
        if not isinstance(schema, Mapping):
            raise InvalidRequestError(f"{where}: a JSON schema must be an object")
        if "$ref" in schema:
            return self._ref(schema["$ref"], where)
        if "const" in schema:
            return literal(schema["const"])
        if "enum" in schema:
            return self._alternatives(name, [literal(v) for v in schema["enum"]], where)
        for key in ("anyOf", "oneOf"):
            if key in schema:
                options = [self.visit(s, f"{name}-{i}", f"{where}.{key}[{i}]")
                           for i, s in enumerate(schema[key])]
                return self._alternatives(name, options, where)
        if "allOf" in schema and len(schema["allOf"]) == 1:
            return self.visit(schema["allOf"][0], name, f"{where}.allOf[0]")
        kind = schema.get("type")
        if isinstance(kind, list):
            options = [self.visit({**schema, "type": k}, f"{name}-{k}", where) for k in kind]
            return self._alternatives(name, options, where)
        return self._typed(schema, kind, name, where)

    def _typed(self, schema: Mapping[str, Any], kind: Any, name: str, where: str) -> str:
        if kind == "object" or (kind is None and "properties" in schema):
            return self._object(schema, name, where)
        if kind == "array":
            return self._array(schema, name, where)
        if kind == "string" and ("minLength" in schema or "maxLength" in schema):
            low = int(schema.get("minLength", 0))
            high = schema.get("maxLength")
            return self._add(name, f'"\\"" char{{{low},{"" if high is None else int(high)}}} "\\""')
        if kind in _SCALARS:
            return _SCALARS[kind]
        if kind is None:
            return "value"
        raise InvalidRequestError(f"{where}: unsupported JSON schema type {kind!r}")

    def _object(self, schema: Mapping[str, Any], name: str, where: str) -> str:
        props = schema.get("properties") or {}
        if not isinstance(props, Mapping):
            raise InvalidRequestError(f"{where}.properties must be an object")
        if not props:
            closed = schema.get("additionalProperties") is False
            return self._add(name, '"{" ws "}"') if closed else "object"
        required = set(schema.get("required") or ())
        rule = self._add(name, "")  # reserved now: its unique name also keys the member rules
        items = []
        for key, sub in props.items():
            value = self.visit(sub, f"{rule}-{key}", f"{where}.properties.{key}")
            items.append((f'{literal(key)} ws ":" ws {value} ws', key in required))
        self.rules[rule] = f'"{{" ws {self._members(items, 0, True, rule)} "}}"'
        return rule

    def _members(self, items: list[tuple[str, bool]], i: int, first: bool, name: str) -> str:
        """Members i.. in order; optional ones may be skipped, commas only between emitted ones."""
        if i == len(items):
            return ""
        if (name, i, first) in self._tails:
            return self._tails[name, i, first]
        member, is_required = items[i]
        comma = "" if first else '"," ws '
        body = f"{comma}{member} {self._members(items, i + 1, False, name)}".strip()
        if not is_required:
            rest = self._members(items, i + 1, first, name)
            alternatives = f"{body} | {rest}" if rest else f"( {body} )?"
            body = self._add(f"{name}-m{i}{'f' if first else ''}", alternatives)
        self._tails[name, i, first] = body
        return body

    def _array(self, schema: Mapping[str, Any], name: str, where: str) -> str:
        item = self.visit(schema.get("items", {}), f"{name}-item", f"{where}.items")
        low = int(schema.get("minItems", 0))
        high = schema.get("maxItems")
        more_high = "" if high is None else str(max(int(high) - 1, 0))
        if high is not None and int(high) == 0:
            return self._add(name, '"[" ws "]"')
        more = f'( "," ws {item} ws ){{{max(low - 1, 0)},{more_high}}}'
        body = f"{item} ws {more}"
        return self._add(name, f'"[" ws {body} "]"' if low >= 1 else f'"[" ws ( {body} )? "]"')

    def _ref(self, ref: Any, where: str) -> str:
        match = re.fullmatch(r"#/(\$defs|definitions)/([^/]+)", ref) if isinstance(ref, str) else None
        if match is None:
            raise InvalidRequestError(f"{where}: only local $ref into $defs/definitions is supported")
        if ref not in self._refs:
            target = (self._root.get(match.group(1)) or {}).get(match.group(2))
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
        base = re.sub(r"[^A-Za-z0-9-]+", "-", name).strip("-") or "r"
        if not base.startswith(("root", "ref-")):
            base = f"root-{base}"
        rule, n = base, 1
        while rule in self.rules or rule == "root":
            n += 1
            rule = f"{base}{n}"
        return rule
