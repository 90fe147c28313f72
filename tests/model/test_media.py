"""Images and audio through the Python API, with the real Gemma 3 270M and the synthetic projector.

The projector's embeddings are meaningless (bench/synthetic_projector.py), so nothing here
judges an answer: it checks the path (a request with media is answered), the cache (the
medium is in the key, a warm start covers it and needs no encoding), exactness (every warm
start equals a cold run of the same conversation, greedy and seeded) and the refusals.
"""

from __future__ import annotations

import time
import tracemalloc
from collections.abc import Iterator
from typing import Any

import pytest

import kvllama
from kvllama import ChatInput, GenerationRequest
from kvllama.bench.media_samples import data_url, pixel_bomb_png, png, wav
from kvllama.bench.synthetic_projector import cached_multimodal_projector
from kvllama.errors import InvalidMediaError

M = "vision"
OPTIONS = {"n_seq_max": 4, "n_ctx": 4 * 1024, "n_threads": 2}
SYSTEM = "You are a careful assistant who looks at pictures and describes what is in them, briefly."
SAMPLINGS = [pytest.param({"temperature": 0.0}, id="greedy"),
             pytest.param({"temperature": 0.8, "seed": 5}, id="seeded")]


@pytest.fixture(scope="module")
def warm() -> Iterator[kvllama.Engine]:
    with kvllama.Engine() as eng:
        eng.load_model(M, mmproj=str(cached_multimodal_projector()), **OPTIONS)
        yield eng


@pytest.fixture(scope="module")
def cold() -> Iterator[kvllama.Engine]:
    """No cache, nothing kept: every request computes its whole prompt."""
    with kvllama.Engine(cache=None) as eng:
        eng.load_model(M, mmproj=str(cached_multimodal_projector()), keep_finished=False, **OPTIONS)
        yield eng


def image_turn(text: str, image: bytes, *, system: bool = True) -> list[dict[str, Any]]:
    user = {"role": "user", "content": [{"type": "image_url", "image_url": {"url": data_url(image)}},
                                        {"type": "text", "text": text}]}
    return [{"role": "system", "content": SYSTEM}, user] if system else [user]


def span_end(engine: kvllama.Engine, messages: list[dict[str, Any]]) -> tuple[int, int]:
    """(start, end) of the last medium in the conversation's prompt."""
    request = engine.resolve_request(M, GenerationRequest.build(chat=ChatInput.of(messages)))
    assert request.layout is not None
    last = request.layout.spans[-1]
    return last.start, last.end


def test_a_model_with_a_projector_says_what_it_takes(warm):
    info = warm.model_info(M)
    assert info.modalities == ("text", "image", "audio")
    assert info.projector == str(cached_multimodal_projector())


def test_the_same_image_gives_the_same_tokens(warm, cold):
    messages = image_turn("What is in this picture?", png(64, 48, 1))
    first = warm.chat(M, messages, max_tokens=12, temperature=0)
    again = warm.chat(M, messages, max_tokens=12, temperature=0)
    assert len(first.generated_tokens) > 0
    assert again.generated_tokens == first.generated_tokens
    assert cold.chat(M, messages, max_tokens=12, temperature=0).generated_tokens == first.generated_tokens


def test_another_image_is_another_prompt(warm, cold):
    text = "Name the main colour of this image, please."
    warm.chat(M, image_turn(text, png(32, 32, 2)), max_tokens=4, temperature=0)
    other = image_turn(text, png(32, 32, 3))
    start, _ = span_end(warm, other)
    result = warm.chat(M, other, max_tokens=12, temperature=0)
    assert result.cache_delta.read <= start  # nothing of the first image's rows served the second
    assert result.generated_tokens == cold.chat(M, other, max_tokens=12, temperature=0).generated_tokens


@pytest.mark.parametrize("sampling", SAMPLINGS)
def test_turn_two_of_a_picture_conversation_restores_the_image_and_equals_a_cold_run(warm, cold, sampling):
    seed = 10 + len(sampling)
    turn1 = image_turn("Describe this photograph in a few words.", png(80, 60, seed))
    first = warm.chat(M, turn1, max_tokens=10, **sampling)
    turn2 = [*turn1, {"role": "assistant", "content": first.reply},
             {"role": "user", "content": "Now tell me which object is the largest one in it."}]
    _, end = span_end(warm, turn2)
    encoded = warm.model_info(M).media_encoded
    second = warm.chat(M, turn2, max_tokens=16, **sampling)
    assert second.cache_delta.read >= end  # the image's positions came from the first turn
    assert warm.model_info(M).media_encoded == encoded  # ...and it was not encoded again
    assert second.generated_tokens == cold.chat(M, turn2, max_tokens=16, **sampling).generated_tokens


@pytest.mark.parametrize("sampling", SAMPLINGS)
def test_turn_two_from_the_cache_after_the_slot_is_gone(sampling):
    """With no slot kept, turn 2 restores turn 1's row from the cache (cut back to the image)."""
    with kvllama.Engine() as eng, kvllama.Engine(cache=None) as cold:
        for e in (eng, cold):
            e.load_model(M, mmproj=str(cached_multimodal_projector()), keep_finished=False, **OPTIONS)
        turn1 = image_turn("What animal could live in a place like this?", png(40, 40, 21))
        first = eng.chat(M, turn1, max_tokens=8, **sampling)
        turn2 = [*turn1, {"role": "assistant", "content": first.reply},
                 {"role": "user", "content": "And what would it eat there in the winter months?"}]
        _, end = span_end(eng, turn2)
        second = eng.chat(M, turn2, max_tokens=16, **sampling)
        assert second.cache_delta.read >= end
        assert second.generated_tokens == cold.chat(M, turn2, max_tokens=16, **sampling).generated_tokens


def test_a_second_user_with_the_same_system_prompt_and_image_reuses_them(warm, cold):
    image = png(96, 64, 31)
    warm.chat(M, image_turn("Is this picture taken indoors or outdoors?", image), max_tokens=6, temperature=0)
    other = image_turn("How many people can you count in this picture?", image)
    _, end = span_end(warm, other)
    result = warm.chat(M, other, max_tokens=12, temperature=0)
    assert result.cache_delta.read >= end
    assert result.generated_tokens == cold.chat(M, other, max_tokens=12, temperature=0).generated_tokens


def test_audio_is_answered_and_kept_warm(warm, cold):
    clip = wav(1.0, 41)
    turn1 = [{"role": "user", "content": [
        {"type": "input_audio", "input_audio": {"data": data_url(clip).split(",", 1)[1], "format": "wav"}},
        {"type": "text", "text": "What do you hear in this recording of a street?"}]}]
    first = warm.chat(M, turn1, max_tokens=8, temperature=0)
    turn2 = [*turn1, {"role": "assistant", "content": first.reply},
             {"role": "user", "content": "Is it loud or quiet, would you say overall?"}]
    _, end = span_end(warm, turn2)
    second = warm.chat(M, turn2, max_tokens=12, temperature=0)
    assert second.cache_delta.read >= end
    assert second.generated_tokens == cold.chat(M, turn2, max_tokens=12, temperature=0).generated_tokens


def test_a_raw_prompt_takes_media_at_its_markers(warm, cold):
    prompt = "Caption: <__media__> A picture of a quiet harbour at dawn, with"
    result = warm.complete(M, prompt, media=[png(50, 30, 51)], max_tokens=8, temperature=0)
    assert len(result.generated_tokens) == 8
    expected = cold.complete(M, prompt, media=[png(50, 30, 51)], max_tokens=8, temperature=0)
    assert result.generated_tokens == expected.generated_tokens
    with pytest.raises(InvalidMediaError, match="markers"):
        warm.complete(M, "No marker here.", media=[png(8, 8, 1)], max_tokens=2)


def test_bad_media_are_refused_before_decoding(warm, engine):
    good = png(16, 16, 1)
    cases = {
        "truncated": good[: len(good) // 2],
        "garbage": b"\x89PNG\r\n\x1a\n" + b"\x00" * 64,
        "not media": b"hello, this is text",
    }
    for name, data in cases.items():
        with pytest.raises(InvalidMediaError):
            warm.complete(M, "Look: <__media__>", media=[data], max_tokens=2)
        assert name
    with pytest.raises(InvalidMediaError, match="more than the limit"):
        warm.complete(M, "<__media__>", media=[pixel_bomb_png()], max_tokens=2)
    with pytest.raises(InvalidMediaError, match="limit is 8"):
        warm.complete(M, "<__media__>" * 9, media=[good] * 9, max_tokens=2)
    with pytest.raises(InvalidMediaError, match="without a projector"):
        engine.complete("gemma", "<__media__>", media=[good], max_tokens=2)
    # The model answers on as before.
    after = warm.chat(M, image_turn("Still there?", good), max_tokens=3, temperature=0)
    assert len(after.generated_tokens) > 0


def test_a_pixel_bomb_costs_almost_nothing():
    bomb = pixel_bomb_png(200_000, 200_000)
    tracemalloc.start()
    started = time.perf_counter()
    with pytest.raises(InvalidMediaError, match="200000 x 200000"):
        GenerationRequest.build("<__media__>", media=[bomb])
    elapsed = time.perf_counter() - started
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert elapsed < 0.5 and peak < 4 << 20


@pytest.mark.parametrize("sampling", SAMPLINGS)
def test_an_image_ending_a_turn_leaves_a_short_tail_that_the_next_turn_recomputes(warm, cold, sampling):
    """Text, then the image last: the few tokens after it (end of image, end of turn, the model's
    turn) are a short segment, computed alone as one small chunk. In turn 2 they lie inside a long
    segment, which a cold run computes in canonical chunks, so turn 2 resumes right after the image
    (their tagged ids never match the plain ones) and still equals a cold run."""
    turn1 = [{"role": "user", "content": [
        {"type": "text", "text": "Here is a picture from my holiday by the sea last summer:"},
        {"type": "image_url", "image_url": {"url": data_url(png(72, 40, 61 + len(sampling)))}}]}]
    first = warm.chat(M, turn1, max_tokens=8, **sampling)
    turn2 = [*turn1, {"role": "assistant", "content": first.reply},
             {"role": "user", "content": "What time of day do you think it was taken at?"}]
    _, end = span_end(warm, turn2)
    second = warm.chat(M, turn2, max_tokens=16, **sampling)
    assert second.cache_delta.read == end
    assert second.generated_tokens == cold.chat(M, turn2, max_tokens=16, **sampling).generated_tokens


def test_a_sticky_session_and_a_parent_row_resume_a_picture_conversation(warm, cold):
    turn1 = image_turn("Which season does this landscape show, do you think?", png(56, 56, 71))
    first = warm.chat(M, turn1, max_tokens=8, temperature=0, session_id="pictures")
    turn2 = [*turn1, {"role": "assistant", "content": first.reply},
             {"role": "user", "content": "What would you wear to walk there today?"}]
    _, end = span_end(warm, turn2)
    expected = cold.chat(M, turn2, max_tokens=12, temperature=0).generated_tokens
    sticky = warm.chat(M, turn2, max_tokens=12, temperature=0, session_id="pictures")
    assert sticky.cache_hit_kind == "sticky" and sticky.cache_delta.read >= end
    assert sticky.generated_tokens == expected
    assert warm.end_session("pictures")
    by_parent = warm.chat(M, turn2, max_tokens=12, temperature=0, parent_key=first.finish_key)
    assert by_parent.cache_delta.read >= end and by_parent.generated_tokens == expected


def test_the_same_image_under_another_projector_is_a_miss(tmp_path):
    """The projector's fingerprint is in the key root: rows on disk survive a restart, but only
    under the projector that computed them."""
    from kvllama import CacheConfig
    from kvllama.bench.synthetic_projector import cached_image_projector

    cache = CacheConfig(ram_bytes=0, shm_dir=None, disk_dir=tmp_path)
    turn1 = image_turn("Tell me about the building in this picture.", png(40, 40, 81))
    with kvllama.Engine(cache=cache) as eng:
        eng.load_model(M, mmproj=str(cached_multimodal_projector()), keep_finished=False, **OPTIONS)
        first = eng.chat(M, turn1, max_tokens=6, temperature=0)
    turn2 = [*turn1, {"role": "assistant", "content": first.reply},
             {"role": "user", "content": "How old could it be, roughly speaking?"}]
    for projector, warm_start in ((cached_image_projector(), False), (cached_multimodal_projector(), True)):
        with kvllama.Engine(cache=cache) as eng:
            eng.load_model(M, mmproj=str(projector), keep_finished=False, **OPTIONS)
            _, end = span_end(eng, turn2)
            read = eng.chat(M, turn2, max_tokens=4, temperature=0).cache_delta.read
            assert (read >= end) is warm_start, (projector, read, end)
