"""The synthetic image/audio projectors, driven through libmtmd's own ctypes API with the real Gemma 3 270M.

Only ``llama_cpp.llama_cpp`` and ``llama_cpp.mtmd_cpp`` calls (plus kvllama's one-time backend
init): mtmd must load each projector against the text model, split a prompt into text/media
chunks, and encode the media into finite ``n_tokens x 640`` embeddings that repeat exactly for
the same media and change with it; the embeddings must also decode into the text model.
"""

from __future__ import annotations

import ctypes
import struct
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import llama_cpp.mtmd_cpp as mtmd
import numpy as np
import pytest

from kvllama.bench.synthetic_audio_projector import (
    SAMPLE_RATE,
    audio_tokens_per_chunk,
    write_audio_projector,
)
from kvllama.bench.synthetic_projector import (
    cached_audio_projector,
    cached_image_projector,
    image_tokens,
    write_image_projector,
    write_multimodal_projector,
)
from kvllama.models.default import default_model_path
from kvllama.native.library import llama

N_EMBD = 640
TEXT, IMAGE, AUDIO = (mtmd.MTMD_INPUT_CHUNK_TYPE_TEXT, mtmd.MTMD_INPUT_CHUNK_TYPE_IMAGE,
                      mtmd.MTMD_INPUT_CHUNK_TYPE_AUDIO)
BOS, START_OF_IMAGE, END_OF_IMAGE = 2, 255999, 256000  # Gemma 3 vocabulary
MTMD_LOG: list[bytes] = []  # what libmtmd logged; shown when an assertion fails
# The installed ctypes log callback, kept here: libmtmd may call it for the rest of the process.
_LOG_CALLBACKS: list[Any] = []


def _keep_log(_level: int, text: bytes | None, _user: object) -> None:
    if text:
        MTMD_LOG.append(text)


def png(width: int, height: int, seed: int) -> bytes:
    """A random RGB PNG, written by hand (no imaging library needed)."""
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    raw = b"".join(b"\x00" + row.tobytes() for row in pixels)  # filter 0 per row

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    body = chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + body


def wav(seconds: float, seed: int, rate: int = SAMPLE_RATE) -> bytes:
    """Random 16-bit PCM mono noise as a WAV file."""
    noise = np.random.default_rng(seed).standard_normal(int(seconds * rate)) * 3000
    samples = noise.astype("<i2").tobytes()
    fmt = struct.pack("<IHHIIHH", 16, 1, 1, rate, rate * 2, 2, 16)  # PCM, mono, rate, byte rate, align, bits
    data = b"data" + struct.pack("<I", len(samples)) + samples
    return b"RIFF" + struct.pack("<I", 36 + len(samples)) + b"WAVEfmt " + fmt + data


class Mtmd:
    """One mtmd context on the shared text model, with the calls the tests need."""

    def __init__(self, projector: Path, model: Any) -> None:
        params = mtmd.mtmd_context_params_default()
        params.use_gpu = False
        params.n_threads = 2
        params.print_timings = False
        self.ctx = mtmd.mtmd_init_from_file(str(projector).encode(), model, params)
        assert self.ctx, b"".join(MTMD_LOG[-20:]).decode(errors="replace")
        self._chunks: list[Any] = []

    def close(self) -> None:
        for chunks in self._chunks:
            mtmd.mtmd_input_chunks_free(chunks)
        mtmd.mtmd_free(self.ctx)

    def bitmap(self, data: bytes, media_id: bytes | None = None) -> Any:
        buf = (ctypes.c_uint8 * len(data)).from_buffer_copy(data)
        bitmap = mtmd.mtmd_helper_bitmap_init_from_buf(self.ctx, buf, len(data), False)
        if bitmap and media_id is not None:
            mtmd.mtmd_bitmap_set_id(bitmap, media_id)
        return bitmap

    def tokenize(self, text: bytes, media: list[bytes], ids: list[bytes] | None = None) -> Any:
        """Chunks for ``text`` (its ``mtmd_default_marker()``s replaced by ``media``), freed on close."""
        bitmaps = [self.bitmap(m, i) for m, i in zip(media, ids or [None] * len(media), strict=True)]
        assert all(bitmaps)
        inp = mtmd.mtmd_input_text(text, len(text), True, True)  # add_special, parse_special
        chunks = mtmd.mtmd_input_chunks_init()
        self._chunks.append(chunks)
        array = (mtmd.mtmd_bitmap_p_ctypes * len(bitmaps))(*bitmaps)
        rc = mtmd.mtmd_tokenize(self.ctx, chunks, ctypes.byref(inp), array, len(bitmaps))
        for bitmap in bitmaps:  # the chunks keep their own copies
            mtmd.mtmd_bitmap_free(bitmap)
        assert rc == 0, rc
        return chunks

    @staticmethod
    def chunk_list(chunks: Any) -> list[Any]:
        return [mtmd.mtmd_input_chunks_get(chunks, i) for i in range(mtmd.mtmd_input_chunks_size(chunks))]

    @staticmethod
    def text_tokens(chunk: Any) -> list[int]:
        n = ctypes.c_size_t()
        tokens = mtmd.mtmd_input_chunk_get_tokens_text(chunk, ctypes.byref(n))
        return [tokens[i] for i in range(n.value)]

    def encode(self, chunk: Any) -> np.ndarray:
        """The chunk's embeddings, ``(n_tokens, N_EMBD)``, copied out of mtmd's buffer."""
        assert mtmd.mtmd_encode_chunk(self.ctx, chunk) == 0
        n = mtmd.mtmd_input_chunk_get_n_tokens(chunk)
        out = np.ctypeslib.as_array(mtmd.mtmd_get_output_embd(self.ctx), shape=(n * N_EMBD,))
        return out.reshape(n, N_EMBD).copy()

    def media_chunk(self, data: bytes, kind: int) -> tuple[Any, list[Any]]:
        chunks = self.chunk_list(self.tokenize(b"x " + mtmd.mtmd_default_marker() + b" y", [data]))
        media = [c for c in chunks if mtmd.mtmd_input_chunk_get_type(c) == kind]
        assert len(media) == 1
        return media[0], chunks


@pytest.fixture(scope="module")
def text_model() -> Iterator[Any]:
    lib = llama()
    if not _LOG_CALLBACKS:
        _LOG_CALLBACKS.append(lib.llama_log_callback(_keep_log))
    mtmd.mtmd_log_set(_LOG_CALLBACKS[0], None)
    mtmd.mtmd_helper_log_set(_LOG_CALLBACKS[0], None)
    model = lib.llama_model_load_from_file(default_model_path().encode(), lib.llama_model_default_params())
    assert model and lib.llama_model_n_embd(model) == N_EMBD
    yield model
    lib.llama_model_free(model)


@pytest.fixture(scope="module")
def projectors(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("mmproj")
    return {"image": write_image_projector(base / "image.gguf"),
            "audio": write_audio_projector(base / "audio.gguf"),
            "both": write_multimodal_projector(base / "both.gguf")}


@pytest.fixture(scope="module")
def image_ctx(text_model: Any, projectors: dict[str, Path]) -> Iterator[Mtmd]:
    ctx = Mtmd(projectors["image"], text_model)
    yield ctx
    ctx.close()


@pytest.fixture(scope="module")
def audio_ctx(text_model: Any, projectors: dict[str, Path]) -> Iterator[Mtmd]:
    ctx = Mtmd(projectors["audio"], text_model)
    yield ctx
    ctx.close()


def test_same_seed_same_bytes(projectors: dict[str, Path], tmp_path: Path) -> None:
    for kind, write in (("image", write_image_projector), ("audio", write_audio_projector)):
        again = write(tmp_path / f"{kind}.gguf")
        assert again.read_bytes() == projectors[kind].read_bytes()
        other = write(tmp_path / f"{kind}-1.gguf", seed=1).read_bytes()
        assert len(other) == len(again.read_bytes()) and other != again.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["audio-1.gguf", "audio.gguf", "image-1.gguf",
                                                          "image.gguf"]  # no temp files left behind
    assert projectors["image"].stat().st_size < 1 << 20 and projectors["audio"].stat().st_size < 2 << 20


def test_token_counts_and_invalid_shapes() -> None:
    assert image_tokens() == 64 and image_tokens(224, 14, 4) == 16 and image_tokens(64, 8, 1) == 64
    assert audio_tokens_per_chunk() == 60 and audio_tokens_per_chunk(30) == 50
    with pytest.raises(ValueError, match="multiple of"):
        image_tokens(100, 8, 2)
    with pytest.raises(ValueError, match="must divide"):
        audio_tokens_per_chunk(8)
    with pytest.raises(ValueError, match="n_ff must differ"):
        write_image_projector("/nonexistent/never-written.gguf", hidden=64, n_ff=64)


def test_image_chunks_surround_the_image_with_gemma_markers(image_ctx: Mtmd) -> None:
    assert mtmd.mtmd_support_vision(image_ctx.ctx) and not mtmd.mtmd_support_audio(image_ctx.ctx)
    text = b"Look: " + mtmd.mtmd_default_marker() + b" done"
    chunks = image_ctx.chunk_list(image_ctx.tokenize(text, [png(50, 40, 1)], [b"img-a"]))
    assert [mtmd.mtmd_input_chunk_get_type(c) for c in chunks] == [TEXT, IMAGE, TEXT]
    before, image, after = chunks
    assert image_ctx.text_tokens(before)[0] == BOS  # add_special puts BOS in the first text chunk
    assert image_ctx.text_tokens(before)[-1] == START_OF_IMAGE
    assert image_ctx.text_tokens(after)[0] == END_OF_IMAGE
    assert mtmd.mtmd_input_chunk_get_n_tokens(image) == image_tokens() == 64
    assert mtmd.mtmd_input_chunk_get_n_pos(image) == 64
    assert mtmd.mtmd_input_chunk_get_id(image) == b"img-a"
    assert mtmd.mtmd_decode_use_non_causal(image_ctx.ctx, image)  # Gemma 3 attends over images both ways
    assert not mtmd.mtmd_decode_use_mrope(image_ctx.ctx)


def test_image_embeddings_are_finite_exact_and_depend_on_the_image(image_ctx: Mtmd) -> None:
    chunk, _ = image_ctx.media_chunk(png(50, 40, 1), IMAGE)
    first = image_ctx.encode(chunk)
    assert first.shape == (64, N_EMBD) and np.isfinite(first).all() and first.std() > 0.01
    assert image_ctx.encode(chunk).tobytes() == first.tobytes()
    again, _ = image_ctx.media_chunk(png(50, 40, 1), IMAGE)  # the same file tokenized anew
    assert image_ctx.encode(again).tobytes() == first.tobytes()
    other, _ = image_ctx.media_chunk(png(50, 40, 2), IMAGE)
    assert not np.allclose(image_ctx.encode(other), first)
    timings = []
    for _ in range(5):
        start = time.perf_counter()
        image_ctx.encode(chunk)
        timings.append(time.perf_counter() - start)
    assert min(timings) < 0.5, timings


def test_audio_chunks_and_embeddings(audio_ctx: Mtmd) -> None:
    assert mtmd.mtmd_support_audio(audio_ctx.ctx) and not mtmd.mtmd_support_vision(audio_ctx.ctx)
    assert mtmd.mtmd_get_audio_sample_rate(audio_ctx.ctx) == SAMPLE_RATE
    chunk, chunks = audio_ctx.media_chunk(wav(1.0, 1), AUDIO)
    assert [mtmd.mtmd_input_chunk_get_type(c) for c in chunks] == [TEXT, AUDIO, TEXT]
    assert audio_ctx.text_tokens(chunks[0])[0] == BOS
    assert mtmd.mtmd_input_chunk_get_n_tokens(chunk) == audio_tokens_per_chunk() == 60
    assert not mtmd.mtmd_decode_use_non_causal(audio_ctx.ctx, chunk)
    first = audio_ctx.encode(chunk)
    assert np.isfinite(first).all() and first.std() > 0.01
    assert audio_ctx.encode(chunk).tobytes() == first.tobytes()
    again, _ = audio_ctx.media_chunk(wav(1.0, 1), AUDIO)
    assert audio_ctx.encode(again).tobytes() == first.tobytes()
    other, _ = audio_ctx.media_chunk(wav(1.0, 2), AUDIO)
    assert not np.allclose(audio_ctx.encode(other), first)
    start = time.perf_counter()
    audio_ctx.encode(chunk)
    assert time.perf_counter() - start < 0.5


def test_long_audio_is_one_chunk_per_30_seconds(audio_ctx: Mtmd) -> None:
    chunks = audio_ctx.chunk_list(audio_ctx.tokenize(b"a " + mtmd.mtmd_default_marker(), [wav(35.0, 3)]))
    audio = [c for c in chunks if mtmd.mtmd_input_chunk_get_type(c) == AUDIO]
    assert [mtmd.mtmd_input_chunk_get_n_tokens(c) for c in audio] == [60, 60]


def test_embeddings_decode_into_the_text_model(text_model: Any, projectors: dict[str, Path]) -> None:
    lib = llama()
    ctx = Mtmd(projectors["both"], text_model)
    params = lib.llama_context_default_params()
    params.n_ctx, params.n_batch, params.n_ubatch = 512, 256, 256
    params.n_threads = params.n_threads_batch = 2
    lctx = lib.llama_init_from_model(text_model, params)
    try:
        marker = mtmd.mtmd_default_marker()
        chunks = ctx.tokenize(b"A " + marker + b" B " + marker + b" C", [png(32, 32, 5), wav(2.0, 5)])
        kinds = [mtmd.mtmd_input_chunk_get_type(c) for c in ctx.chunk_list(chunks)]
        assert kinds == [TEXT, IMAGE, TEXT, AUDIO, TEXT]
        n_past = lib.llama_pos(0)
        assert mtmd.mtmd_helper_eval_chunks(ctx.ctx, lctx, chunks, 0, 0, 256, True, ctypes.byref(n_past)) == 0
        assert n_past.value == mtmd.mtmd_helper_get_n_pos(chunks) == mtmd.mtmd_helper_get_n_tokens(chunks)
        logits = np.ctypeslib.as_array(lib.llama_get_logits_ith(lctx, -1), shape=(lib.llama_vocab_n_tokens(
            lib.llama_model_get_vocab(text_model)),))
        assert np.isfinite(logits).all()
    finally:
        lib.llama_free(lctx)
        ctx.close()


def test_refusals(text_model: Any, image_ctx: Mtmd, tmp_path: Path) -> None:
    narrow = write_image_projector(tmp_path / "narrow.gguf", n_embd=32)  # the tiny model's width, not 640
    params = mtmd.mtmd_context_params_default()
    params.use_gpu, params.n_threads = False, 2
    assert not mtmd.mtmd_init_from_file(str(narrow).encode(), text_model, params)
    assert b"mismatch between text model" in b"".join(MTMD_LOG[-20:])
    assert not image_ctx.bitmap(b"not an image at all")
    assert not image_ctx.bitmap(wav(1.0, 1))  # audio into an image-only projector
    text = b"two markers " + mtmd.mtmd_default_marker() * 2
    inp = mtmd.mtmd_input_text(text, len(text), True, True)
    bitmap = image_ctx.bitmap(png(8, 8, 1))
    chunks = mtmd.mtmd_input_chunks_init()
    try:  # one bitmap for two markers
        assert mtmd.mtmd_tokenize(image_ctx.ctx, chunks, ctypes.byref(inp),
                                  (mtmd.mtmd_bitmap_p_ctypes * 1)(bitmap), 1) != 0
    finally:
        mtmd.mtmd_input_chunks_free(chunks)
        mtmd.mtmd_bitmap_free(bitmap)


def test_cached_projectors_are_written_once(projectors: dict[str, Path], tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    image, audio = cached_image_projector(), cached_audio_projector()
    assert image.parent == audio.parent == tmp_path / "kvllama"
    assert image.read_bytes() == projectors["image"].read_bytes()
    assert audio.read_bytes() == projectors["audio"].read_bytes()
    assert sorted(p.name for p in image.parent.iterdir()) == sorted([image.name, audio.name])
    mtime = image.stat().st_mtime_ns
    assert cached_image_projector() == image and image.stat().st_mtime_ns == mtime
