"""Several choices of one OpenAI request (``n`` > 1), streamed or not.

Each choice is its own engine request with its own seed (the request's seed
plus the choice's index, so a seeded request is reproducible choice by
choice). They share the prompt's prefill through the KV cache: queued
together, the first computes the prompt and saves a row where the others'
prompts part from it (everything but its last 8 tokens), and the others
restore that row instead of computing the prompt again (decoding/warm.py), so
``n`` choices cost one prefill plus ``n`` short tails, and every choice equals
the same request run alone. Streamed choices interleave their chunks, each
with its ``index``; the usage chunk and ``[DONE]`` come once, at the end.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from starlette.requests import Request

from kvllama.events import Event
from kvllama.request import GenerationRequest
from kvllama.results import CompletionResult
from kvllama.server.errors import ApiError
from kvllama.server.generation import Generation, first_event, start, stream_frames, until_disconnect
from kvllama.server.openai.rendering import OpenAIStreamWriter
from kvllama.server.state import ServerState


async def start_choices(state: ServerState, name: str, model_id: str, generation: GenerationRequest,
                        n: int, started: float) -> list[Generation]:
    """Queue ``n`` requests; if one is refused, the ones already queued are cancelled."""
    if n > 1 and generation.options.session_id is not None:
        raise ApiError(400, "n > 1 cannot share one session_id", param="n")
    gens: list[Generation] = []
    try:
        for i in range(n):
            gens.append(await start(state, name, model_id, generation.with_choice_seed(i), started))
    except BaseException:
        for gen in gens:
            await gen.aclose()
        raise
    return gens


async def complete_choices(request: Request, gens: list[Generation]) -> list[CompletionResult]:
    """Run every choice to the end, cancelling them all if the client leaves."""
    try:
        return list(await until_disconnect(request, asyncio.gather(*(g.drain() for g in gens))))
    finally:
        for gen in gens:
            await gen.aclose()


async def first_events(request: Request, gens: list[Generation]) -> list[Event]:
    firsts: list[Event] = []
    try:
        for gen in gens:
            firsts.append(await first_event(request, gen))
    except BaseException:
        for gen in gens:
            await gen.aclose()
        raise
    return firsts


async def merged_frames(gens: list[Generation], firsts: list[Event],
                        writers: list[OpenAIStreamWriter]) -> AsyncIterator[str]:
    """Every choice's frames as they come, then the usage chunk (if asked for) and ``[DONE]``."""
    queue: asyncio.Queue[str | None] = asyncio.Queue()

    async def pump(i: int) -> None:
        try:
            async for frame in stream_frames(gens[i], firsts[i], writers[i]):
                await queue.put(frame)
        finally:
            await queue.put(None)

    tasks = [asyncio.create_task(pump(i)) for i in range(len(gens))]
    try:
        running = len(tasks)
        while running:
            frame = await queue.get()
            if frame is None:
                running -= 1
            else:
                yield frame
        try:
            results = [gen.result() for gen in gens]
        except Exception:
            return  # a choice failed: its error frame is already out
        for frame in writers[0].closing(results):
            yield frame
    finally:
        for task in tasks:
            task.cancel()
        for gen in gens:
            await gen.aclose()
