"""kvllama: a Python runtime for llama.cpp models whose conversations stay warm.

Start with :class:`Engine`::

    import kvllama
    with kvllama.Engine() as engine:
        engine.load_model("m")          # no path: the embedded Gemma 3 270M
        print(engine.complete("m", "Once upon a time", max_tokens=16).reply)
"""

from kvllama import errors
from kvllama.api.engine import Engine
from kvllama.api.streams import AsyncRequestStream, RequestStream
from kvllama.events import (
    CacheDelta,
    DoneEvent,
    ErrorEvent,
    Event,
    Stats,
    TextEvent,
    TokenEvent,
    TokenLogprob,
)
from kvllama.kvcache import CacheConfig, KvCache
from kvllama.media.inputs import MediaLimits
from kvllama.models.loaded import ModelInfo
from kvllama.options import ModelOptions
from kvllama.request import ChatInput, GenerationRequest, RequestOptions
from kvllama.results import CompletionResult, ResultBuilder, collect
from kvllama.sampling import SamplingParams

__all__ = [
    "AsyncRequestStream",
    "CacheConfig",
    "CacheDelta",
    "ChatInput",
    "CompletionResult",
    "DoneEvent",
    "Engine",
    "ErrorEvent",
    "Event",
    "GenerationRequest",
    "KvCache",
    "MediaLimits",
    "ModelInfo",
    "ModelOptions",
    "RequestOptions",
    "RequestStream",
    "ResultBuilder",
    "SamplingParams",
    "Stats",
    "TextEvent",
    "TokenEvent",
    "TokenLogprob",
    "collect",
    "errors",
]
__version__ = "0.1.0"

# Library convention: no output unless the application configures logging.
# (Without this, llama.cpp's warnings would reach stderr via logging's last resort.)
import logging as _logging

_logging.getLogger("kvllama").addHandler(_logging.NullHandler())
