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

from kvllama.chat.prompt import ChatInput
from kvllama.request import GenerationRequest
from kvllama.results import CompletionResult

if TYPE_CHECKING:
    from kvllama.api.streams import AsyncRequestStream, RequestStream

Messages = Sequence[Mapping[str, Any]]
Tools = Sequence[Mapping[str, Any]] | None
System = str | Sequence[Any] | None


def chat_request(messages: Messages, system: System, tools: Tools, template: str | None,
                 params: dict[str, Any]) -> GenerationRequest:
    """The one request object of a chat turn; the engine renders it (kvllama.chat.prompt)."""
    return GenerationRequest.build(chat=ChatInput.of(messages, system=system, tools=tools, template=template),
                                   **params)


class ChatMethods:
    """Mixed into :class:`~kvllama.api.engine.Engine`."""

    def chat(self, model_id: str, messages: Messages, *, system: System = None,
             tools: Tools = None, template: str | None = None, **params: Any) -> CompletionResult:
        """Run a chat turn to the end."""
        return self.infer_chat(model_id, messages, system=system, tools=tools, template=template,
                               **params).result()

    async def achat(self, model_id: str, messages: Messages, *, system: System = None,
                    tools: Tools = None, template: str | None = None, **params: Any) -> CompletionResult:
        stream = await self.asubmit(model_id, chat_request(messages, system, tools, template, params))  # type: ignore[attr-defined]
        return await stream.result()  # type: ignore[no-any-return]

    def infer_chat(self, model_id: str, messages: Messages, *, system: System = None,
                   tools: Tools = None, template: str | None = None, **params: Any) -> RequestStream:
        """A chat turn as a stream of events."""
        return self.start(model_id, chat_request(messages, system, tools, template, params))  # type: ignore[attr-defined,no-any-return]

    def ainfer_chat(self, model_id: str, messages: Messages, *, system: System = None,
                    tools: Tools = None, template: str | None = None, **params: Any) -> AsyncRequestStream:
        return self.astart(model_id, chat_request(messages, system, tools, template, params))  # type: ignore[attr-defined,no-any-return]
