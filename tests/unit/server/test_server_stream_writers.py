"""The SSE state machines, fed synthetic kvllama events (a recorded transcript, checked frame by frame)."""

from __future__ import annotations

from kvllama.errors import DecodeError
from kvllama.events import CacheDelta, DoneEvent, Event, Stats, TextEvent, TokenEvent
from kvllama.results import ResultBuilder
from kvllama.server.anthropic.rendering import AnthropicStreamWriter, stop_of
from kvllama.server.openai.rendering import OpenAIStreamWriter
from kvllama.server.sse import decode_frames


def done(reason: str = "stop", stop: str | None = None, generated: int = 3) -> DoneEvent:
    stats = Stats(prompt_tokens=10, generated_tokens=generated, queue_seconds=0.0, prefill_seconds=0.1,
                  decode_seconds=0.1, time_to_first_token=0.1, tokens_per_second=20.0)
    return DoneEvent(finish_reason=reason, stats=stats, prompt_tokens=tuple(range(10)),  # type: ignore[arg-type]
                     stop_sequence=stop, cache_delta=CacheDelta(read=4, created=5))


def run(writer, events: list[Event]) -> list[tuple[str | None, object]]:
    builder = ResultBuilder()
    text = "".join(writer.start())
    for event in events:
        text += "".join(writer.on_event(event, builder.add(event)))
        if isinstance(event, DoneEvent):
            text += "".join(writer.finish(builder.result(), builder.reply))
    return decode_frames(text)


TRANSCRIPT: list[Event] = [TokenEvent(72), TextEvent("He"), TokenEvent(108), TokenEvent(0),
                           TextEvent("llo"), done()]


def test_anthropic_transcript_event_by_event():
    frames = run(AnthropicStreamWriter("msg_1", "m", 10, ["###"], 16), TRANSCRIPT)
    assert frames == [
        ("message_start", {"type": "message_start", "message": {
            "id": "msg_1", "type": "message", "role": "assistant", "model": "m", "content": [],
            "stop_reason": None, "stop_sequence": None,
            "usage": {"input_tokens": 10, "output_tokens": 0, "cache_creation_input_tokens": 0,
                      "cache_read_input_tokens": 0}}}),
        ("content_block_start", {"type": "content_block_start", "index": 0,
                                 "content_block": {"type": "text", "text": ""}}),
        ("ping", {"type": "ping"}),
        ("content_block_delta", {"type": "content_block_delta", "index": 0,
                                 "delta": {"type": "text_delta", "text": "He"}}),
        ("content_block_delta", {"type": "content_block_delta", "index": 0,
                                 "delta": {"type": "text_delta", "text": "llo"}}),
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
        ("message_delta", {"type": "message_delta",
                           "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                           "usage": {"input_tokens": 1, "output_tokens": 3, "cache_creation_input_tokens": 5,
                                     "cache_read_input_tokens": 4}}),
        ("message_stop", {"type": "message_stop"}),
    ]


def test_anthropic_error_frame_has_the_error_shape():
    writer = AnthropicStreamWriter("msg_1", "m", 10, [], 16)
    (frame,) = decode_frames("".join(writer.error(DecodeError(-1, "boom"))))
    assert frame == ("error", {"type": "error", "error": {"type": "api_error",
                                                          "message": "llama_decode returned -1: boom"}})


def test_anthropic_stop_reasons():
    def result(event: DoneEvent):
        b = ResultBuilder()
        b.add(event)
        return b.result()

    assert stop_of(result(done("stop", "###")), ["###"], 16) == ("stop_sequence", "###")
    # A stop sequence the server added for the plain template is an ordinary end of turn.
    assert stop_of(result(done("stop", "\nUser:")), ["###"], 16) == ("end_turn", None)
    assert stop_of(result(done("length", generated=16)), [], 16) == ("max_tokens", None)
    assert stop_of(result(done("length", generated=5)), [], 16) == ("model_context_window_exceeded", None)
    assert stop_of(result(done("cancelled")), [], 16) == ("end_turn", None)


def test_openai_chat_transcript():
    frames = run(OpenAIStreamWriter("chat", "chatcmpl-1", "m", include_usage=True), TRANSCRIPT)
    assert frames[-1] == (None, "[DONE]")
    chunks = [data for _, data in frames[:-1]]
    deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"]]
    assert deltas == [{"role": "assistant", "content": ""}, {"content": "He"}, {"content": "llo"}, {}]
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]] == [None, None, None, "stop"]
    assert chunks[-1]["usage"] == {"prompt_tokens": 10, "completion_tokens": 3, "total_tokens": 13,
                                   "prompt_tokens_details": {"cached_tokens": 4}}


def test_openai_completion_transcript_and_length():
    events = [*TRANSCRIPT[:-1], done("length")]
    frames = run(OpenAIStreamWriter("completion", "cmpl-1", "m", include_usage=False), events)
    chunks = [data for _, data in frames[:-1]]
    assert [c["choices"][0]["text"] for c in chunks] == ["He", "llo", ""]
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    assert all(c["object"] == "text_completion" and "usage" not in c for c in chunks)
