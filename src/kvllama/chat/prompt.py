"""The one chat-prompt builder: messages in, the prompt's text, tokens, stops and save points out.

Every chat entry point (``Engine.chat``, the OpenAI, Anthropic and Ollama
routes, the scale-out ingress) builds its prompt here, so a conversation
becomes the same tokens whichever way it arrives. The template is rendered
once for the prompt (plus once per save-point variant, see
:mod:`kvllama.chat.prefix_points`) and the prompt is tokenized once: the
tokens go on to the request, so nothing downstream tokenizes it again.

A base model such as the default Gemma 3 270M has no template and no notion
of a turn ending; with the documented ``plain`` fallback it would go on
writing the user's next line, so the template's stop strings ("\\nUser:",
"\\nAssistant:") are added to the client's. They are not the client's: the
Anthropic edge reports such a stop as ``end_turn``, not ``stop_sequence``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from kvllama.chat import prefix_points

System = str | Sequence[Any] | None
Tools = Sequence[Mapping[str, Any]] | None
# (messages, system, tools) -> the prompt text, through the request's template.
Render = Callable[[Sequence[Mapping[str, Any]], System, Tools], str]
# The prompt text -> the tokens a request queues for it.
Tokenize = Callable[[str], list[int]]


@dataclass(frozen=True)
class ChatInput:
    """A conversation as a client sends it: what the template renders, nothing model-bound yet.

    ``tools`` are in the OpenAI function shape that model templates are written
    for; ``template`` names a template (None: the model's); ``breakpoints`` are
    the client's own shared-prefix marks (Anthropic's ``cache_control``).
    """

    messages: tuple[Mapping[str, Any], ...]
    system: str | tuple[Any, ...] | None = None
    tools: tuple[Mapping[str, Any], ...] | None = None
    template: str | None = None
    breakpoints: tuple[prefix_points.Variant, ...] = ()

    @classmethod
    def of(cls, messages: Sequence[Mapping[str, Any]], *, system: System = None, tools: Tools = None,
           template: str | None = None,
           breakpoints: Sequence[prefix_points.Variant] = ()) -> ChatInput:
        return cls(tuple(messages), system if system is None or isinstance(system, str) else tuple(system),
                   None if tools is None else tuple(tools), template, tuple(breakpoints))


@dataclass(frozen=True)
class ChatPrompt:
    text: str
    tokens: tuple[int, ...]
    # Stop strings the template needs (the client's own come first, see with_stops).
    template_stops: tuple[str, ...]
    # Token offsets where shared prefixes end: the engine saves a row at each (decoding/warm.py).
    save_points: tuple[int, ...] = ()

    def with_stops(self, client_stops: Sequence[str]) -> tuple[str, ...]:
        """The client's stops, then the template's that are not among them."""
        merged = list(client_stops)
        merged.extend(s for s in self.template_stops if s not in merged)
        return tuple(merged)


def build_chat_prompt(chat: ChatInput, render: Render, tokenize: Tokenize, template_stops: tuple[str, ...],
                      *, find_save_points: bool) -> ChatPrompt:
    """Render and tokenize once; with a KV cache, find the shared prefixes' ends too."""
    text = render(chat.messages, chat.system, chat.tools)
    tokens = tokenize(text)
    points: tuple[int, ...] = ()
    if find_save_points:
        conv = prefix_points.Conversation(chat.messages, chat.system, chat.tools)
        points = prefix_points.save_points(render, tokenize, conv, text, tokens, chat.breakpoints)
    return ChatPrompt(text, tuple(tokens), template_stops, points)
