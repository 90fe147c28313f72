"""The one request object: built once at the edge, frozen, taken by the engine and the loop.

A request is either a prompt (text or token ids) or a conversation
(:class:`~kvllama.chat.prompt.ChatInput`), with its sampling parameters and
options. :meth:`GenerationRequest.build` is the one place keyword options are
turned into these typed values: values left unset (None) are dropped here
and nowhere else, and every value's syntax is checked here; what depends on
a model (token ids against the vocabulary, the context size, adapter files,
the chat template) is checked once at admission.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from kvllama.chat.prompt import ChatInput
from kvllama.errors import InvalidRequestError
from kvllama.media.inputs import MediaLimits, Medium, check_count, medium
from kvllama.media.layout import PromptLayout
from kvllama.media.messages import extract_media
from kvllama.request.options import AdapterSet, RequestOptions, adapter_set, take_options
from kvllama.sampling import SamplingParams

Prompt = str | Sequence[int]
_SEED_MOD = 2**32 - 1


@dataclass(frozen=True)
class GenerationRequest:
    """What to generate from, and how."""

    # Exactly one of prompt (text, or token ids) and chat.
    prompt: str | tuple[int, ...] | None = None
    chat: ChatInput | None = None
    # Token ids that come before the prompt (Ollama's ``context``: a previous reply's
    # transcript); the prompt's text then follows without a BOS.
    context: tuple[int, ...] = ()
    sampling: SamplingParams = field(default_factory=SamplingParams)
    options: RequestOptions = field(default_factory=RequestOptions)
    # The LoRA set asked for; None: the model's default scales (resolved at admission).
    adapters: AdapterSet | None = None
    # Images and audio, in the order of the media markers in the prompt (a chat's media parts
    # become markers in build); once resolved, where their positions are in the prompt.
    media: tuple[Medium, ...] = ()
    layout: PromptLayout | None = None

    @classmethod
    def build(cls, prompt: Prompt | None = None, *, chat: ChatInput | None = None,
              context: Sequence[int] = (), media: Sequence[bytes | Medium] = (),
              media_limits: MediaLimits | None = None, **params: Any) -> GenerationRequest:
        """From keyword options (``Engine.infer``'s and the HTTP edges'); None means unset.

        ``media``: images or audio (file bytes) for a prompt's media markers; a chat's media
        come in its messages' content parts instead.
        """
        params = {k: v for k, v in params.items() if v is not None}
        limits = media_limits or MediaLimits()
        found = tuple(m if isinstance(m, Medium) else _medium(m, f"media[{i}]", limits)
                      for i, m in enumerate(media))
        if chat is not None:
            messages, in_chat = extract_media(chat.messages, limits)
            if in_chat:
                chat, found = replace(chat, messages=messages), found + in_chat
        check_count(found, limits)
        if (prompt is None) == (chat is None):
            raise InvalidRequestError("give a prompt or chat messages (one of them)")
        if prompt is not None and not isinstance(prompt, str):
            if isinstance(prompt, bytes) or not isinstance(prompt, Sequence):
                raise InvalidRequestError("prompt must be a string or a list of token ids")
            prompt = tuple(prompt)
        adapters = params.pop("adapters", None)
        options = take_options(params)
        return cls(prompt=prompt, chat=chat, context=tuple(context),
                   sampling=SamplingParams.from_kwargs(**params), options=options,
                   adapters=None if adapters is None else adapter_set(adapters), media=found)

    @property
    def resolved(self) -> bool:
        """Whether the prompt is already the token ids the loop runs (no chat, no context left)."""
        return (isinstance(self.prompt, tuple) and self.chat is None and not self.context
                and (not self.media or self.layout is not None))

    def with_choice_seed(self, index: int) -> GenerationRequest:
        """Choice ``index`` of several from one prompt: a seeded request's seed plus the index."""
        if not index or self.sampling.seed is None:
            return self
        return replace(self, sampling=replace(self.sampling, seed=(self.sampling.seed + index) % _SEED_MOD))


def _medium(data: object, where: str, limits: MediaLimits) -> Medium:
    if not isinstance(data, bytes | bytearray | memoryview):
        raise InvalidRequestError(f"{where} must be the bytes of an image or audio file")
    return medium(bytes(data), where, limits=limits)
