"""Media as clients send them: checked from their bytes' headers before anything decodes them.

Every API's image or audio part becomes a :class:`Medium` here (a data URL,
base64, or raw bytes from Python). What it is comes from the bytes, not from
the label: a declared type that disagrees with the content is refused, as is
anything the vendored decoders (stb_image, miniaudio) do not read. An image's
size is read from its header, so a "pixel bomb" (a few KB announcing 100,000 x
100,000 pixels) is refused before a byte of it is decoded. Remote URLs are
refused: the server never fetches.
"""

from __future__ import annotations

import base64
import binascii
import re
import struct
from collections.abc import Sequence
from dataclasses import dataclass

from kvllama.errors import InvalidMediaError

IMAGE_FORMATS = ("png", "jpeg", "gif", "bmp", "psd", "pnm")
AUDIO_FORMATS = ("wav", "mp3", "flac")
_MIME = {"image/png": "png", "image/jpeg": "jpeg", "image/jpg": "jpeg", "image/gif": "gif",
         "image/bmp": "bmp", "image/x-ms-bmp": "bmp", "image/vnd.adobe.photoshop": "psd",
         "image/x-portable-anymap": "pnm", "image/x-portable-pixmap": "pnm",
         "image/x-portable-graymap": "pnm", "audio/wav": "wav", "audio/x-wav": "wav",
         "audio/wave": "wav", "audio/mpeg": "mp3", "audio/mp3": "mp3", "audio/flac": "flac",
         "audio/x-flac": "flac"}
_DATA_URL = re.compile(r"data:([\w.+-]+/[\w.+-]+)?((?:;[\w.+-]+=[\w.+-]+)*);base64,(.*)", re.S | re.I)


@dataclass(frozen=True)
class MediaLimits:
    """Per-request bounds (``kvllama serve --max-media`` and friends)."""

    max_media: int = 8
    max_bytes: int = 20_000_000
    max_pixels: int = 50_000_000

    def __post_init__(self) -> None:
        for name in ("max_media", "max_bytes", "max_pixels"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"MediaLimits.{name} must be a positive integer, got {value!r}")


@dataclass(frozen=True, eq=False)
class Medium:
    """One image or audio clip: its bytes and what its header says."""

    kind: str  # "image" or "audio"
    format: str
    data: bytes
    width: int = 0
    height: int = 0


def medium(data: bytes, where: str, *, declared: str | None = None, kind: str | None = None,
           limits: MediaLimits = MediaLimits()) -> Medium:
    """Check raw bytes; ``declared``: the client's format name (from a MIME type or a field)."""
    if not data:
        raise InvalidMediaError(f"{where}: the medium is empty")
    if len(data) > limits.max_bytes:
        raise InvalidMediaError(f"{where}: {len(data)} bytes is more than the limit of {limits.max_bytes}")
    fmt = sniff(data)
    if fmt is None:
        raise InvalidMediaError(
            f"{where}: not an image or audio format this server decodes "
            f"(images: {', '.join(IMAGE_FORMATS)}; audio: {', '.join(AUDIO_FORMATS)})")
    found = "image" if fmt in IMAGE_FORMATS else "audio"
    if declared is not None and declared != fmt:
        raise InvalidMediaError(f"{where}: declared as {declared} but the data is {_a(fmt)} {found}")
    if kind is not None and kind != found:
        raise InvalidMediaError(f"{where}: expected {kind} but the data is {_a(fmt)} {found}")
    if found == "audio":
        return Medium("audio", fmt, data)
    width, height = image_size(data, fmt, where)
    if width <= 0 or height <= 0:
        raise InvalidMediaError(f"{where}: the {fmt} header announces an empty image ({width} x {height})")
    if width * height > limits.max_pixels:
        raise InvalidMediaError(f"{where}: the {fmt} header announces {width} x {height} pixels, more than "
                                f"the limit of {limits.max_pixels}")
    return Medium("image", fmt, data, width, height)


def from_base64(text: object, where: str, *, declared: str | None = None, kind: str | None = None,
                limits: MediaLimits = MediaLimits()) -> Medium:
    if not isinstance(text, str | bytes):
        raise InvalidMediaError(f"{where} must be a base64 string")
    if len(text) > limits.max_bytes * 4 // 3 + 8:
        raise InvalidMediaError(f"{where}: more than the limit of {limits.max_bytes} bytes")
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidMediaError(f"{where} is not valid base64") from None
    return medium(data, where, declared=declared, kind=kind, limits=limits)


def from_url(url: object, where: str, *, kind: str | None = None,
             limits: MediaLimits = MediaLimits()) -> Medium:
    """A ``data:`` URL (OpenAI's ``image_url``); http(s) URLs are refused: the server never fetches."""
    if not isinstance(url, str):
        raise InvalidMediaError(f"{where} must be a URL string")
    if re.match(r"\s*https?:", url, re.I):
        raise InvalidMediaError(f"{where}: remote URLs are not fetched; send the data inline as a "
                                "data:image/...;base64 URL")
    match = _DATA_URL.fullmatch(url.strip())
    if match is None:
        raise InvalidMediaError(f"{where} must be a data URL (data:<type>;base64,<data>)")
    mime = match.group(1)
    declared = declared_format(mime, where) if mime else None
    return from_base64(match.group(3), where, declared=declared, kind=kind, limits=limits)


def declared_format(mime: object, where: str) -> str:
    """The format a MIME type names (``image/png`` -> ``png``); one this server does not decode is refused."""
    fmt = _MIME.get(mime.lower()) if isinstance(mime, str) else None
    if fmt is None:
        raise InvalidMediaError(f"{where}: media type {mime!r} is not one this server decodes "
                                f"(images: {', '.join(IMAGE_FORMATS)}; audio: {', '.join(AUDIO_FORMATS)})")
    return fmt


def format_name(name: object, where: str) -> str:
    """OpenAI's ``input_audio.format`` ("wav", "mp3", "flac")."""
    if name not in AUDIO_FORMATS:
        raise InvalidMediaError(f"{where} must be one of {', '.join(AUDIO_FORMATS)}, got {name!r}")
    return str(name)


def check_count(media: Sequence[Medium], limits: MediaLimits) -> None:
    if len(media) > limits.max_media:
        raise InvalidMediaError(f"{len(media)} media in one request; the limit is {limits.max_media}")


def sniff(data: bytes) -> str | None:
    """The format from the first bytes, or None."""
    head = data[:16]
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    if head.startswith(b"BM") and len(data) >= 26:
        return "bmp"
    if head.startswith(b"8BPS"):
        return "psd"
    if re.match(rb"P[256]\s", head):
        return "pnm"
    if head[:4] == b"RIFF" and head[8:12] == b"WAVE":
        return "wav"
    if head.startswith(b"fLaC"):
        return "flac"
    if head.startswith(b"ID3") or (len(head) > 1 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0):
        return "mp3"
    return None


def image_size(data: bytes, fmt: str, where: str) -> tuple[int, int]:
    """Width and height from the header (no decoding); a header too short to say is refused."""
    try:
        if fmt == "png":
            return struct.unpack(">II", data[16:24])
        if fmt == "gif":
            return struct.unpack("<HH", data[6:10])
        if fmt == "bmp":
            w, h = struct.unpack("<ii", data[18:26])
            return w, abs(h)
        if fmt == "psd":
            h, w = struct.unpack(">II", data[14:22])
            return w, h
        if fmt == "pnm":
            fields = re.sub(rb"#[^\n]*", b"", data[2:256]).split()
            return int(fields[0]), int(fields[1])
        return _jpeg_size(data)
    except (struct.error, ValueError, IndexError):
        raise InvalidMediaError(f"{where}: the {fmt} header is truncated or corrupt") from None


def _jpeg_size(data: bytes) -> tuple[int, int]:
    """The first start-of-frame marker's size (SOF0-SOF15 but DHT, JPG and DAC)."""
    i = 2
    while i + 9 < len(data):
        if data[i] != 0xFF:
            raise ValueError("not a marker")
        marker = data[i + 1]
        if marker == 0xFF:
            i += 1
            continue
        (length,) = struct.unpack(">H", data[i + 2 : i + 4])
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            h, w = struct.unpack(">HH", data[i + 5 : i + 9])
            return w, h
        i += 2 + length
    raise ValueError("no frame header")


def _a(fmt: str) -> str:
    return "an" if fmt[0] in "aefhilmnorsx" else "a"
