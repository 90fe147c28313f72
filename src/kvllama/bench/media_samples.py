"""Images and audio made from a seed, for tests and ``kvllama bench media`` (no imaging library).

Random pixels and noise: with the synthetic projectors (bench/synthetic_projector.py)
what a medium shows does not matter, only that its bytes decide its embeddings.
"""

from __future__ import annotations

import base64
import struct
import zlib

import numpy as np

SAMPLE_RATE = 16_000


def png(width: int, height: int, seed: int) -> bytes:
    """A random 8-bit RGB PNG."""
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    raw = b"".join(b"\x00" + row.tobytes() for row in pixels)  # filter type 0 on every row
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(raw)) + _chunk(
        b"IEND", b"")


def pixel_bomb_png(width: int = 100_000, height: int = 100_000) -> bytes:
    """A few hundred bytes whose header announces ``width x height`` pixels (of one zero byte each row
    compressed, so decoding it would inflate to width * height * 3 bytes)."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    body = _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(b"\x00" * 4096)) + _chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + body


def wav(seconds: float, seed: int, rate: int = SAMPLE_RATE) -> bytes:
    """Random 16-bit PCM mono noise."""
    noise = np.random.default_rng(seed).standard_normal(int(seconds * rate)) * 3000
    samples = noise.astype("<i2").tobytes()
    fmt = struct.pack("<IHHIIHH", 16, 1, 1, rate, rate * 2, 2, 16)
    return (b"RIFF" + struct.pack("<I", 36 + len(samples)) + b"WAVEfmt " + fmt + b"data"
            + struct.pack("<I", len(samples)) + samples)


def data_url(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
