"""The engine's text tools: tokens in and out, and chat templates.

Vocabulary calls are pure and callable from any thread (llama.cpp's
vocabulary is read-only once loaded); ids are checked like a prompt's.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from kvllama.api.models import ModelRegistry
from kvllama.api.preparation import prompt_tokens
from kvllama.chat.templates import render_chat, resolve_template
from kvllama.decoding.tool_memory import ToolCallMemory
from kvllama.errors import InvalidRequestError
from kvllama.models.loaded import LoadedModel
from kvllama.request import Prompt


class TextTools:
    def __init__(self, models: ModelRegistry, tool_memory: ToolCallMemory) -> None:
        self._models = models
        self.tool_memory = tool_memory

    def tokenize(
        self, model_id: str, text: str, *, add_special: bool = True, parse_special: bool = True
    ) -> list[int]:
        if not isinstance(text, str):
            raise InvalidRequestError("text must be a string")
        with self._models.use(model_id) as model:
            return model.backend.tokenize(text, add_special=add_special, parse_special=parse_special)

    def prompt_tokens(self, model_id: str, prompt: Prompt) -> list[int]:
        """The tokens a request with this prompt queues (BOS added unless a text starts with it)."""
        with self._models.use(model_id) as model:
            return prompt_tokens(model.backend, prompt)

    def detokenize(self, model_id: str, tokens: Sequence[int]) -> str:
        with self._models.use(model_id) as model:
            backend = model.backend
            return backend.detokenize(prompt_tokens(backend, tokens) if tokens else [])

    def token_pieces(self, model_id: str, tokens: Sequence[int]) -> list[bytes]:
        """Each token's bytes, control tokens as their text (ids checked like a prompt's)."""
        with self._models.use(model_id) as model:
            backend = model.backend
            ids = prompt_tokens(backend, tokens) if tokens else []
            return [backend.piece(t, special=True) for t in ids]

    def apply_chat_template(
        self,
        model_id: str,
        messages: Sequence[Mapping[str, Any]],
        system: str | Sequence[Any] | None = None,
        tools: Sequence[Mapping[str, Any]] | None = None,
        template: str | None = None,
        *,
        add_generation_prompt: bool = True,
    ) -> str:
        """Render with the named template, else the GGUF's, else the load option, else 'plain'.

        An assistant message carrying exactly the tool calls of a turn this engine
        generated is rendered as that turn's own text (decoding/tool_memory.py).
        """
        with self._models.use(model_id) as model:
            return self.render_chat(model, messages, system, tools, template,
                                    add_generation_prompt=add_generation_prompt)

    def render_chat(
        self, model: LoadedModel, messages: Sequence[Mapping[str, Any]], system: str | Sequence[Any] | None,
        tools: Sequence[Mapping[str, Any]] | None, template: str | None, *,
        add_generation_prompt: bool = True,
    ) -> str:
        """:meth:`apply_chat_template` on a model the caller holds."""
        d = model.backend.description
        source, _ = resolve_template(template, d.chat_template, model.options.chat_template)
        return render_chat(
            source, messages, system=system, tools=tools,
            add_generation_prompt=add_generation_prompt, special_tokens=d.special_tokens,
            replay=self.tool_memory.replay,
        )
