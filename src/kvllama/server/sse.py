"""Server-sent events framing.

OpenAI streams bare ``data:`` frames ending with ``data: [DONE]``; Anthropic
names every frame (``event: <type>``) and repeats the type inside the JSON.
Both are built here so the byte format lives in one place.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from starlette.responses import StreamingResponse

DONE = "data: [DONE]\n\n"
# no-cache: proxies must not buffer or replay; X-Accel-Buffering: nginx must not buffer.
HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def dumps(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


def data_frame(obj: Any) -> str:
    """An unnamed frame (OpenAI)."""
    return f"data: {dumps(obj)}\n\n"


def event_frame(obj: dict[str, Any]) -> str:
    """A named frame whose name is the payload's ``type`` (Anthropic)."""
    return f"event: {obj['type']}\ndata: {dumps(obj)}\n\n"


def sse_response(frames: AsyncIterator[str]) -> StreamingResponse:
    return StreamingResponse(frames, media_type="text/event-stream", headers=HEADERS)


def parse_frames(text: str) -> list[tuple[str | None, str]]:
    """Split an SSE transcript into (event name, data) pairs; for tests and the bench client."""
    out: list[tuple[str | None, str]] = []
    for block in text.split("\n\n"):
        if not block.strip():
            continue
        name: str | None = None
        data: list[str] = []
        for line in block.split("\n"):
            if line.startswith("event:"):
                name = line[len("event:"):].strip()
            elif line.startswith("data:"):
                data.append(line[len("data:"):].lstrip(" "))
        out.append((name, "\n".join(data)))
    return out


def decode_frames(text: str) -> list[tuple[str | None, Any]]:
    """Like :func:`parse_frames` with the data JSON-decoded (OpenAI's ``[DONE]`` stays a string)."""
    return [(name, data if data == "[DONE]" else json.loads(data)) for name, data in parse_frames(text)]
