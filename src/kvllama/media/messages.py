"""Media parts of chat messages, taken out once at the edge and replaced by the media marker.

Every API family puts images and audio somewhere else: OpenAI in content parts
(``image_url`` with a data URL, ``input_audio`` with base64 and a format),
Anthropic in ``image`` blocks (a base64 source), Ollama in a message's
``images`` list. Here each becomes a :class:`~kvllama.media.inputs.Medium`, in
order, and its place in the text becomes :data:`MEDIA_MARKER`, so templates
render plain text and the projector's tokenizer finds every medium where the
client put it. Messages without media come back unchanged (the same objects).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from kvllama.errors import InvalidMediaError
from kvllama.media.inputs import (
    MediaLimits,
    Medium,
    check_count,
    declared_format,
    format_name,
    from_base64,
    from_url,
)

# llama.cpp's mtmd marker (mtmd_default_marker()): where a medium goes in the prompt text.
MEDIA_MARKER = "<__media__>"


def extract_media(messages: Sequence[Mapping[str, Any]], limits: MediaLimits
                  ) -> tuple[tuple[Mapping[str, Any], ...], tuple[Medium, ...]]:
    """The messages with markers in place of their media, and the media in prompt order."""
    media: list[Medium] = []
    out = [_message(m, f"messages[{i}]", media, limits) for i, m in enumerate(messages)]
    check_count(media, limits)
    return tuple(out), tuple(media)


def _message(message: Any, where: str, media: list[Medium], limits: MediaLimits) -> Any:
    if not isinstance(message, Mapping):
        return message  # normalize_messages says what is wrong with it
    images = message.get("images")
    content = message.get("content")
    if not images and not (isinstance(content, Sequence) and not isinstance(content, str)):
        return message
    result = dict(message)
    if images:
        if not isinstance(images, Sequence) or isinstance(images, str):
            raise InvalidMediaError(f"{where}.images must be a list of base64 strings")
        markers = []
        for j, data in enumerate(images):
            media.append(from_base64(data, f"{where}.images[{j}]", kind="image", limits=limits))
            markers.append(MEDIA_MARKER)
        result.pop("images")
        # Ollama's images come before the message's text.
        result["content"] = "".join(markers) + (content if isinstance(content, str) else "")
        return result
    if isinstance(content, Sequence) and not isinstance(content, str):
        result["content"] = [_part(p, f"{where}.content[{j}]", media, limits) for j, p in enumerate(content)]
    return result


def _part(part: Any, where: str, media: list[Medium], limits: MediaLimits) -> Any:
    if not isinstance(part, Mapping):
        return part
    kind = part.get("type")
    if kind in ("image_url", "input_image"):
        ref = part.get("image_url")
        url = ref.get("url") if isinstance(ref, Mapping) else ref
        media.append(from_url(url, f"{where}.image_url.url", kind="image", limits=limits))
    elif kind == "input_audio":
        audio = part.get("input_audio")
        if not isinstance(audio, Mapping):
            raise InvalidMediaError(f"{where}.input_audio must be an object with data and format")
        fmt = format_name(audio.get("format"), f"{where}.input_audio.format")
        media.append(from_base64(audio.get("data"), f"{where}.input_audio.data", declared=fmt, kind="audio",
                                 limits=limits))
    elif kind == "image":
        media.append(_anthropic_image(part.get("source"), f"{where}.source", limits))
    else:
        return part
    return {"type": "text", "text": MEDIA_MARKER}


def _anthropic_image(source: Any, where: str, limits: MediaLimits) -> Medium:
    if not isinstance(source, Mapping):
        raise InvalidMediaError(f"{where} must be an object")
    if source.get("type") == "url":
        return from_url(source.get("url"), f"{where}.url", kind="image", limits=limits)
    if source.get("type") != "base64":
        raise InvalidMediaError(f"{where}.type must be 'base64' (or 'url' with a data URL)")
    declared = declared_format(source.get("media_type"), f"{where}.media_type")
    return from_base64(source.get("data"), f"{where}.data", declared=declared, kind="image", limits=limits)
