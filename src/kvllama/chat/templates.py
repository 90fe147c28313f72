"""Rendering chat messages with a Jinja chat template.

Which template, in order: the one the caller names (a builtin name or Jinja
source), the one in the GGUF file (``tokenizer.chat_template``), the one given
at load time (``chat_template`` option), and finally the documented ``plain``
fallback, so chat works even on base models such as the default Gemma 3 270M,
whose GGUF has no template. The environment is sandboxed: templates come from
model files, which are untrusted input.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

from kvllama.chat.messages import normalize_messages
from kvllama.errors import ChatTemplateError

BUILTIN_TEMPLATES: dict[str, str] = {
    # A transcript any base model can continue; the fallback when nothing else is known.
    "plain": (
        "{% for m in messages %}"
        "{% if m.role == 'system' %}{{ m.content }}\n\n"
        "{% elif m.role == 'tool' %}Tool result: {{ m.content }}\n"
        "{% else %}{{ m.role | capitalize }}: {{ m.content }}"
        "{% for c in m.tool_calls or [] %}{{ '\\n' }}Tool call: {{ c.function.name }}"
        "({{ c.function.arguments }}){% endfor %}{{ '\\n' }}"
        "{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}Assistant:{% endif %}"
    ),
    "chatml": (
        "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    ),
    "gemma": (
        "{{ bos_token }}{% set sys = namespace(text='') %}"
        "{% for m in messages %}{% if m.role == 'system' %}"
        "{% set sys.text = sys.text + m.content + '\n\n' %}"
        "{% else %}<start_of_turn>{{ 'model' if m.role == 'assistant' else 'user' }}\n"
        "{% if loop.index0 == 1 or (loop.first and m.role != 'system') %}{{ sys.text }}{% endif %}"
        "{{ m.content }}<end_of_turn>\n{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
    ),
    "llama3": (
        "{{ bos_token }}{% for m in messages %}"
        "<|start_header_id|>{{ m.role }}<|end_header_id|>\n\n{{ m.content }}<|eot_id|>"
        "{% endfor %}"
        "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
    ),
}
FALLBACK_TEMPLATE = "plain"
# "plain" has no turn end: a base model goes on writing the user's next line, so these
# end a reply at the turn boundary (a new "Assistant:" line is one too).
PLAIN_STOPS = ("\nUser:", "\nAssistant:")


def template_stops(source: str) -> tuple[str, ...]:
    """Stop strings a template needs, by where it came from (``builtin:plain``) or its name."""
    return PLAIN_STOPS if source in ("builtin:plain", "plain") else ()


def resolve_template(
    requested: str | None, from_gguf: str | None, from_options: str | None
) -> tuple[str, str]:
    """Returns (template source, where it came from) following the order above."""
    if requested:
        if requested in BUILTIN_TEMPLATES:
            return BUILTIN_TEMPLATES[requested], f"builtin:{requested}"
        if "{" not in requested:
            raise ChatTemplateError(
                f"unknown chat template {requested!r}; builtins are "
                f"{', '.join(sorted(BUILTIN_TEMPLATES))}, or pass Jinja source"
            )
        return requested, "request"
    if from_gguf:
        return from_gguf, "gguf"
    if from_options:
        if from_options in BUILTIN_TEMPLATES:
            return BUILTIN_TEMPLATES[from_options], f"builtin:{from_options}"
        return from_options, "options"
    return BUILTIN_TEMPLATES[FALLBACK_TEMPLATE], f"builtin:{FALLBACK_TEMPLATE}"


def render_chat(
    template: str,
    messages: Sequence[Mapping[str, Any]],
    *,
    system: str | Sequence[Any] | None = None,
    tools: Sequence[Mapping[str, Any]] | None = None,
    add_generation_prompt: bool = True,
    special_tokens: Mapping[str, str] | None = None,
    replay: Callable[[list[dict[str, Any]]], list[dict[str, Any]]] | None = None,
) -> str:
    """``replay``: applied to the normalized messages (exact tool-call replay, Engine's)."""
    normalized = normalize_messages(messages, system)
    if replay is not None:
        normalized = replay(normalized)
    try:
        compiled = _environment().from_string(template)
        return compiled.render(
            messages=normalized,
            tools=list(tools) if tools else None,
            add_generation_prompt=add_generation_prompt,
            **(special_tokens or {}),
        )
    except jinja2.TemplateError as exc:
        raise ChatTemplateError(f"chat template failed to render: {exc}") from None


def _raise(message: str) -> None:
    raise ChatTemplateError(f"chat template refused the messages: {message}")


def _tojson(value: Any, indent: int | None = None, **_kw: Any) -> str:
    return json.dumps(value, ensure_ascii=False, indent=indent)


_env: ImmutableSandboxedEnvironment | None = None


def _environment() -> ImmutableSandboxedEnvironment:
    global _env
    if _env is None:
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        env.globals["raise_exception"] = _raise
        env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
        env.filters["tojson"] = _tojson
        _env = env
    return _env
