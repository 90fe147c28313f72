"""Responses API bodies: the response object, its output items, and the typed stream events.

A reply's blocks become output items in order: thinking -> a ``reasoning``
item (its text as ``reasoning_text`` content), text -> a ``message`` item with
one ``output_text`` part, a tool call -> a ``function_call`` item (its
arguments the exact JSON the model wrote, as on the other routes). Item ids
are minted once per block (:class:`ItemIds`), so a streamed response's events
and its final object, and ``GET`` later, name the same items.

The stream is the documented sequence: ``response.created``,
``response.in_progress``, then per item ``output_item.added``, its content
events (``content_part.added``, ``output_text.delta``... ``output_text.done``,
``content_part.done``; ``function_call_arguments.delta`` / ``.done``;
``reasoning_text.delta`` / ``.done``), ``output_item.done``, and last
``response.completed`` (``response.incomplete`` when the token limit cut it,
``response.failed`` on an error), every event with its ``sequence_number``.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from kvllama.events import Event
from kvllama.replies import (
    Block,
    BlockEnd,
    BlockStart,
    Delta,
    Reply,
    TextDelta,
    ThinkingDelta,
    ToolInputDelta,
)
from kvllama.results import CompletionResult
from kvllama.server import sse
from kvllama.server.errors import from_exception


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


@dataclass
class Context:
    """What the response object echoes of its request."""

    id: str
    model: str
    created_at: float = field(default_factory=time.time)
    request: dict[str, Any] = field(default_factory=dict)


class ItemIds:
    """One id per reply block, minted on first use; tool calls get a ``call_id`` too."""

    _PREFIX: ClassVar[dict[str, str]] = {"text": "msg", "thinking": "rs", "tool_use": "fc"}

    def __init__(self) -> None:
        self._ids: dict[int, str] = {}
        self._calls: dict[int, str] = {}

    def item(self, index: int, kind: str) -> str:
        if index not in self._ids:
            self._ids[index] = new_id(self._PREFIX[kind])
        return self._ids[index]

    def call(self, index: int, block: Block) -> str:
        if index not in self._calls:
            given = block.call.id if block.call is not None else ""
            self._calls[index] = given or new_id("call")
        return self._calls[index]


def output_item(index: int, block: Block, ids: ItemIds, status: str = "completed") -> dict[str, Any]:
    item_id = ids.item(index, block.kind)
    if block.kind == "thinking":
        return {"type": "reasoning", "id": item_id, "summary": [], "status": status,
                "content": [{"type": "reasoning_text", "text": block.text}] if status == "completed" else []}
    if block.kind == "tool_use":
        return {"type": "function_call", "id": item_id, "call_id": ids.call(index, block), "name": block.name,
                "arguments": block.arguments_json if status == "completed" else "", "status": status}
    content = [_output_text(block.text)] if status == "completed" else []
    return {"type": "message", "id": item_id, "status": status, "role": "assistant", "content": content}


def _output_text(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def usage(result: CompletionResult | None) -> dict[str, Any] | None:
    if result is None:
        return None
    s = result.stats
    return {"input_tokens": s.prompt_tokens,
            "input_tokens_details": {"cached_tokens": result.cache_delta.read, "cache_write_tokens": 0},
            "output_tokens": s.generated_tokens, "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": s.prompt_tokens + s.generated_tokens}


def response_object(ctx: Context, status: str, output: list[dict[str, Any]],
                    result: CompletionResult | None = None,
                    error: dict[str, Any] | None = None) -> dict[str, Any]:
    incomplete = {"reason": "max_output_tokens"} if status == "incomplete" else None
    return {
        "id": ctx.id, "object": "response", "created_at": int(ctx.created_at), "status": status,
        "model": ctx.model, "output": output, "usage": usage(result), "error": error,
        "incomplete_details": incomplete,
        "completed_at": int(time.time()) if status == "completed" else None,
        **ctx.request,
    }


def status_of(result: CompletionResult) -> str:
    return "incomplete" if result.finish_reason == "length" else "completed"


def final_object(ctx: Context, result: CompletionResult, reply: Reply, ids: ItemIds) -> dict[str, Any]:
    output = [output_item(i, b, ids) for i, b in enumerate(reply.blocks)]
    return response_object(ctx, status_of(result), output, result)


class ResponsesStreamWriter:
    """Content deltas -> the Responses API's typed SSE events (see the module docstring)."""

    def __init__(self, ctx: Context, reply: Reply,
                 on_done: Callable[[dict[str, Any]], None] | None = None) -> None:
        """``reply``: the generation's fold of the same deltas (the one reducer's), read for each
        block's kind and text as its events are written."""
        self.ctx = ctx
        self.ids = ItemIds()
        self._reply = reply
        self._seq = 0
        self._on_done = on_done

    def _event(self, kind: str, **fields: Any) -> str:
        frame = {"type": kind, "sequence_number": self._seq, **fields}
        self._seq += 1
        return sse.event_frame(frame)

    def start(self) -> list[str]:
        shell = response_object(self.ctx, "in_progress", [])
        return [self._event("response.created", response=shell),
                self._event("response.in_progress", response=shell)]

    def on_event(self, event: Event, deltas: Sequence[Delta]) -> list[str]:
        return [frame for delta in deltas for frame in self._frames(delta)]

    def _frames(self, delta: Delta) -> list[str]:
        where = {"output_index": getattr(delta, "index", 0)}
        match delta:
            case BlockStart(index=index):
                block = self._reply.blocks[index]
                out = [self._event("response.output_item.added", **where,
                                   item=output_item(index, block, self.ids, "in_progress"))]
                if block.kind == "text":
                    item_id = self.ids.item(index, "text")
                    out.append(self._event("response.content_part.added", item_id=item_id,
                                           content_index=0, part=_output_text(""), **where))
                return out
            case TextDelta(index=index, text=text) if text:
                return [self._event("response.output_text.delta", item_id=self.ids.item(index, "text"),
                                    content_index=0, delta=text, logprobs=[], **where)]
            case ThinkingDelta(index=index, text=text) if text:
                return [self._event("response.reasoning_text.delta", item_id=self.ids.item(index, "thinking"),
                                    content_index=0, delta=text, **where)]
            case ToolInputDelta(index=index, arguments_json=arguments) if arguments:
                return [self._event("response.function_call_arguments.delta",
                                    item_id=self.ids.item(index, "tool_use"), delta=arguments, **where)]
            case BlockEnd(index=index):
                return self._block_done(index)
        return []

    def _block_done(self, index: int) -> list[str]:
        block = self._reply.blocks[index]
        where = {"output_index": index, "item_id": self.ids.item(index, block.kind)}
        out = []
        if block.kind == "text":
            out.append(self._event("response.output_text.done", content_index=0, text=block.text, logprobs=[],
                                   **where))
            out.append(self._event("response.content_part.done", content_index=0,
                                   part=_output_text(block.text), **where))
        elif block.kind == "thinking":
            out.append(self._event("response.reasoning_text.done", content_index=0, text=block.text, **where))
        else:
            out.append(self._event("response.function_call_arguments.done", arguments=block.arguments_json,
                                   name=block.name, **where))
        out.append(self._event("response.output_item.done", output_index=index,
                               item=output_item(index, block, self.ids)))
        return out

    def finish(self, result: CompletionResult, reply: Reply) -> list[str]:
        body = final_object(self.ctx, result, reply, self.ids)
        if self._on_done is not None:
            self._on_done(body)
        kind = "response.completed" if body["status"] == "completed" else "response.incomplete"
        return [self._event(kind, response=body)]

    def error(self, exc: BaseException) -> list[str]:
        err = from_exception(exc)
        failed = response_object(self.ctx, "failed", [], error={"code": err.code or "server_error",
                                                                "message": err.message})
        return [self._event("response.failed", response=failed)]
