"""Images and audio over HTTP through the official openai, anthropic and ollama clients.

One real server with the default model twice: "vision" loaded with the synthetic projector
(bench/synthetic_projector.py: meaningless answers, a real path) and "gemma" without one.
A picture conversation's second turn reports the image among its cached prompt tokens and
equals the Python API's answer to the same conversation on a cold engine.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import ollama
import openai
import pytest

import kvllama
from kvllama import ChatInput, GenerationRequest, MediaLimits
from kvllama.bench.media_samples import b64, data_url, pixel_bomb_png, png, wav
from kvllama.bench.synthetic_projector import cached_multimodal_projector
from kvllama.server import ServerConfig, ServerThread, create_app

VISION, TEXT_ONLY = "vision", "gemma"
OPTIONS = {"n_seq_max": 2, "n_ctx": 4096, "n_threads": 1}


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[str, kvllama.Engine]]:
    with kvllama.Engine() as engine:
        engine.load_model(VISION, mmproj=str(cached_multimodal_projector()), **OPTIONS)
        engine.load_model(TEXT_ONLY, **OPTIONS)
        config = ServerConfig(max_body_bytes=8 << 20, media_limits=MediaLimits(max_media=3))
        with ServerThread(create_app(engine, config)) as url:
            yield url, engine


@pytest.fixture(scope="module")
def cold() -> Iterator[kvllama.Engine]:
    with kvllama.Engine(cache=None) as engine:
        engine.load_model(VISION, mmproj=str(cached_multimodal_projector()), keep_finished=False, **OPTIONS)
        yield engine


@pytest.fixture(scope="module")
def oai(server) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{server[0]}/v1", api_key="unused", max_retries=0) as client:
        yield client


def image_end(engine: kvllama.Engine, messages: list[dict[str, Any]]) -> int:
    request = engine.resolve_request(VISION, GenerationRequest.build(chat=ChatInput.of(messages)))
    assert request.layout is not None
    return request.layout.spans[-1].end


def test_openai_image_conversation_stays_warm_and_exact(oai, server, cold):
    turn1: list[dict[str, Any]] = [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": data_url(png(64, 64, 3))}},
        {"type": "text", "text": "What is shown in this picture, in a few words?"}]}]
    first = oai.chat.completions.create(model=VISION, messages=turn1,  # type: ignore[arg-type]
                                        max_tokens=8, temperature=0)
    reply = first.choices[0].message.content or ""
    assert first.usage is not None and first.usage.prompt_tokens > 64  # the image's positions count
    turn2 = [*turn1, {"role": "assistant", "content": reply},
             {"role": "user", "content": "Which colour stands out the most in it?"}]
    second = oai.chat.completions.create(model=VISION, messages=turn2,  # type: ignore[arg-type]
                                         max_tokens=12, temperature=0)
    assert second.usage is not None and second.usage.prompt_tokens_details is not None
    assert second.usage.prompt_tokens_details.cached_tokens >= image_end(server[1], turn2)
    expected = cold.chat(VISION, turn2, max_tokens=12, temperature=0).reply
    assert second.choices[0].message.content == expected


def test_a_responses_input_image_is_answered(oai):
    content = [{"type": "input_image", "image_url": data_url(png(30, 30, 6))},
               {"type": "input_text", "text": "What is in this image?"}]
    r = oai.responses.create(model=VISION, input=[{"role": "user", "content": content}],  # type: ignore[typeddict-item,list-item]
                             max_output_tokens=6, temperature=0)
    assert r.status in ("completed", "incomplete") and r.usage is not None and r.usage.input_tokens > 64


def test_openai_audio_part_is_answered(oai):
    clip = wav(1.0, 5)
    content = [{"type": "input_audio", "input_audio": {"data": b64(clip), "format": "wav"}},
               {"type": "text", "text": "What can you hear in this clip?"}]
    r = oai.chat.completions.create(model=VISION, max_tokens=6, temperature=0,
                                    messages=[{"role": "user", "content": content}])  # type: ignore[list-item,misc]
    assert r.choices[0].finish_reason in ("stop", "length") and r.usage is not None
    assert r.usage.prompt_tokens > 60  # 60 audio positions per 30 s window with this projector


def test_anthropic_image_block_and_cached_turn(server):
    url, engine = server
    source = {"type": "base64", "media_type": "image/png", "data": b64(png(40, 30, 9))}
    image = {"type": "image", "source": source}
    ask = {"type": "text", "text": "Describe this image for me, briefly."}
    turn1 = [{"role": "user", "content": [image, ask]}]
    with anthropic.Anthropic(base_url=url, api_key="unused", max_retries=0) as claude:
        first = claude.messages.create(model=VISION, max_tokens=8, messages=turn1)  # type: ignore[arg-type]
        text = "".join(b.text for b in first.content if b.type == "text")
        turn2 = [*turn1, {"role": "assistant", "content": text or "Nothing."},
                 {"role": "user", "content": "Is there any text written in the image?"}]
        second = claude.messages.create(model=VISION, max_tokens=8, messages=turn2)  # type: ignore[arg-type]
    assert (second.usage.cache_read_input_tokens or 0) >= image_end(engine, turn2)


def test_ollama_images_on_chat_and_generate(server):
    url, _ = server
    picture = png(32, 32, 12)
    with ollama.Client(host=url) as client:
        message = {"role": "user", "content": "What is this?", "images": [picture]}
        chat = client.chat(model=VISION, messages=[message], options={"num_predict": 6, "temperature": 0})
        assert chat.done and chat.prompt_eval_count and chat.prompt_eval_count > 64
        gen = client.generate(model=VISION, prompt="Caption this image:", images=[picture],
                              options={"num_predict": 6, "temperature": 0})
        assert gen.done and gen.prompt_eval_count and gen.prompt_eval_count > 64
        assert "vision" in (client.show(VISION).capabilities or [])
        assert "vision" not in (client.show(TEXT_ONLY).capabilities or [])


def test_anthropic_count_tokens_counts_the_image_positions(server):
    url, engine = server
    source = {"type": "base64", "media_type": "image/png", "data": b64(png(9, 9, 4))}
    image = {"type": "image", "source": source}
    messages = [{"role": "user", "content": [image, {"type": "text", "text": "What is it?"}]}]
    with anthropic.Anthropic(base_url=url, api_key="unused", max_retries=0) as claude:
        counted = claude.messages.count_tokens(model=VISION, messages=messages)  # type: ignore[arg-type]
    request = engine.resolve_request(VISION, GenerationRequest.build(chat=ChatInput.of(messages)))
    assert counted.input_tokens == len(request.prompt or ()) > 64


@pytest.mark.parametrize(("content", "words"), [
    ([{"type": "image_url", "image_url": {"url": data_url(png(8, 8, 1)[:30])}}], "truncated"),
    ([{"type": "image_url", "image_url": {"url": data_url(pixel_bomb_png())}}], "100000 x 100000"),
    ([{"type": "image_url", "image_url": {"url": data_url(png(8, 8, 1))}}] * 4, "limit is 3"),
    ([{"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}], "remote URLs"),
    ([{"type": "image_url", "image_url": {"url": data_url(png(8, 8, 1), "image/jpeg")}}], "declared as jpeg"),
])
def test_bad_media_get_a_400_naming_the_problem(server, content, words):
    url, _ = server
    body = {"model": VISION, "max_tokens": 2, "messages": [{"role": "user", "content": content}]}
    r = httpx.post(f"{url}/v1/chat/completions", timeout=10, json=body)
    assert r.status_code == 400, r.text
    assert r.elapsed.total_seconds() < 1.0  # refused from headers and counts, nothing decoded at length
    error = r.json()["error"]
    assert error["code"] == "invalid_media" and words in error["message"]


def test_media_for_a_model_without_a_projector_is_a_400(oai):
    with pytest.raises(openai.BadRequestError, match="without a projector"):
        content = [{"type": "image_url", "image_url": {"url": data_url(png(8, 8, 2))}}]
        oai.chat.completions.create(model=TEXT_ONLY, max_tokens=2,
                                    messages=[{"role": "user", "content": content}])  # type: ignore[list-item,misc]
    # ...and both models answer on.
    for model in (TEXT_ONLY, VISION):
        hello = [{"role": "user", "content": "Hi"}]
        assert oai.chat.completions.create(model=model, max_tokens=2, messages=hello)  # type: ignore[arg-type]
