"""``Engine.chat`` and friends: chat messages in, the same results and streams out.

What llama-cpp-python's ``create_chat_completion`` and vLLM's ``LLM.chat``
give Python users: the model's chat template is applied (the request's
``template``, else the GGUF's, else the load option, else ``plain``), the
template's own stop strings are added to the caller's (``plain`` has no turn
end, so "\\nUser:" and "\\nAssistant:" end a reply), and, with a KV cache,
the prompt's shared prefixes (the end of the system prompt, of the history)
are saved as the HTTP server does (kvllama.chat.prefix_points).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from kvllama.chat import prefix_points
from kvllama.chat.templates import template_stops
from kvllama.results import CompletionResult

if TYPE_CHECKING:
    from kvllama.api.streams import AsyncRequestStream, RequestStream
    from kvllama.kvcache import KvCache

Messages = Sequence[Mapping[str, Any]]
Tools = Sequence[Mapping[str, Any]] | None


class ChatMethods:
    """Mixed into :class:`~kvllama.api.engine.Engine`."""

    cache: KvCache | None

    def chat(self, model_id: str, messages: Messages, *, system: str | Sequence[Any] | None = None,
             tools: Tools = None, template: str | None = None, **params: Any) -> CompletionResult:
        """Run a chat turn to the end (``complete`` on the rendered prompt)."""
        text, params = self._chat_prompt(model_id, messages, system, tools, template, params)
        return self.complete(model_id, text, **params)  # type: ignore[attr-defined,no-any-return]

    async def achat(self, model_id: str, messages: Messages, *, system: str | Sequence[Any] | None = None,
                    tools: Tools = None, template: str | None = None, **params: Any) -> CompletionResult:
        text, params = self._chat_prompt(model_id, messages, system, tools, template, params)
        return await self.acomplete(model_id, text, **params)  # type: ignore[attr-defined,no-any-return]

    def infer_chat(self, model_id: str, messages: Messages, *, system: str | Sequence[Any] | None = None,
                   tools: Tools = None, template: str | None = None, **params: Any) -> RequestStream:
        """A chat turn as a stream of events (``infer`` on the rendered prompt)."""
        text, params = self._chat_prompt(model_id, messages, system, tools, template, params)
        return self.infer(model_id, text, **params)  # type: ignore[attr-defined,no-any-return]

    def ainfer_chat(self, model_id: str, messages: Messages, *, system: str | Sequence[Any] | None = None,
                    tools: Tools = None, template: str | None = None, **params: Any) -> AsyncRequestStream:
        text, params = self._chat_prompt(model_id, messages, system, tools, template, params)
        return self.ainfer(model_id, text, **params)  # type: ignore[attr-defined,no-any-return]

    def _chat_prompt(
        self, model_id: str, messages: Messages, system: str | Sequence[Any] | None,
        tools: Tools, template: str | None, params: dict[str, Any],
    ) -> tuple[str, dict[str, Any]]:
        render = self.apply_chat_template  # type: ignore[attr-defined]
        text: str = render(model_id, messages, system=system, tools=tools, template=template)
        source = self.chat_template_source(model_id) if template is None else template  # type: ignore[attr-defined]
        stop = params.get("stop")
        given = [stop] if isinstance(stop, str) else list(stop or [])
        merged = given + [s for s in template_stops(source) if s not in given]
        out = {**params, "stop": merged or None}
        if self.cache is not None and "save_points" not in params:
            conv = prefix_points.Conversation(messages, system, tools)
            out["save_points"] = list(prefix_points.save_points(
                lambda m, s, t: render(model_id, m, system=s, tools=t, template=template),
                lambda t: self.prompt_tokens(model_id, t), conv, text)) or None  # type: ignore[attr-defined]
        return text, out
