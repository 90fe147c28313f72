"""Per-request generation parameters, validated before a request is queued.

Defaults follow llama.cpp's common sampler (top_k 40, top_p 0.95, min_p 0.05,
temperature 0.8) so a request with no parameters behaves like llama-server.
"""

from __future__ import annotations

import math
import secrets
from dataclasses import dataclass, field, replace
from typing import Any

from kvllama.errors import InvalidSamplingError
from kvllama.gbnf import check_grammar

MAX_STOP_SEQUENCES = 16
MAX_LOGIT_BIAS = 1024
MAX_LOGPROBS = 20


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int = 256
    temperature: float = 0.8
    top_k: int = 40
    top_p: float = 0.95
    min_p: float = 0.05
    repetition_penalty: float = 1.0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    # How many recent tokens the penalties look at (llama.cpp's penalty_last_n).
    penalty_last_n: int = 64
    # None: a fresh random seed per request, recorded here once admitted so the
    # run can be replayed.
    seed: int | None = None
    grammar: str | None = None
    stop: tuple[str, ...] = field(default_factory=tuple)
    # Stop at an end-of-generation token (off for benchmarks that need exact lengths).
    stop_at_eog: bool = True
    # Extended thinking, for models loaded with thinking markers: False treats the
    # markers as plain text; a budget ends thinking after that many tokens.
    thinking: bool | None = None
    thinking_budget_tokens: int | None = None
    # Added to a token's logit before sampling ((token id, bias) pairs; -100 bans it in
    # practice, +100 all but forces it), as OpenAI's logit_bias.
    logit_bias: tuple[tuple[int, float], ...] = ()
    # End-of-generation tokens cannot be sampled before this many tokens (vLLM's
    # min_tokens), or at all with ignore_eos (llama-server's and vLLM's ignore_eos).
    min_tokens: int = 0
    ignore_eos: bool = False
    # Report each sampled token's log-probability and this many alternatives (0..20);
    # None: no log-probabilities.
    logprobs: int | None = None

    @classmethod
    def from_kwargs(cls, **params: Any) -> SamplingParams:
        known = {f for f in cls.__dataclass_fields__}
        unknown = sorted(set(params) - known)
        if unknown:
            raise InvalidSamplingError(
                f"unknown generation parameter(s): {', '.join(unknown)}; "
                f"known: {', '.join(sorted(known))}"
            )
        stop = params.get("stop")
        if stop is None:
            params.pop("stop", None)
        elif isinstance(stop, str):
            params["stop"] = (stop,)
        elif isinstance(stop, list | tuple):
            params["stop"] = tuple(stop)
        else:
            raise InvalidSamplingError("stop must be a string or a list of strings")
        if "logit_bias" in params and params["logit_bias"] is not None:
            params["logit_bias"] = _bias_pairs(params["logit_bias"])
        cleaned = {k: v for k, v in params.items() if v is not None}
        sampling = cls(**cleaned)
        sampling.validate()
        return sampling

    def validate(self) -> None:
        _int_in("max_tokens", self.max_tokens, 0, None)
        _float_in("temperature", self.temperature, 0.0, 100.0)
        _int_in("top_k", self.top_k, 0, None)
        _float_in("top_p", self.top_p, 0.0, 1.0)
        _float_in("min_p", self.min_p, 0.0, 1.0)
        _float_in("repetition_penalty", self.repetition_penalty, 0.0, 10.0, low_open=True)
        _float_in("frequency_penalty", self.frequency_penalty, -2.0, 2.0)
        _float_in("presence_penalty", self.presence_penalty, -2.0, 2.0)
        _int_in("penalty_last_n", self.penalty_last_n, -1, None)
        if self.seed is not None:
            _int_in("seed", self.seed, 0, 2**32 - 2)
        if self.grammar is not None:
            if not isinstance(self.grammar, str) or not self.grammar:
                raise InvalidSamplingError("grammar must be a non-empty GBNF string")
            # Here, not at admission: llama.cpp parses it on the decode loop's
            # thread, where a bad grammar can abort or exhaust the process.
            check_grammar(self.grammar)
        _int_in("min_tokens", self.min_tokens, 0, None)
        if not isinstance(self.ignore_eos, bool):
            raise InvalidSamplingError("ignore_eos must be true or false")
        if self.logprobs is not None:
            _int_in("logprobs", self.logprobs, 0, MAX_LOGPROBS)
        if len(self.logit_bias) > MAX_LOGIT_BIAS:
            raise InvalidSamplingError(f"logit_bias takes at most {MAX_LOGIT_BIAS} tokens")
        for token, bias in self.logit_bias:
            _int_in("logit_bias token id", token, 0, None)
            _float_in(f"logit_bias[{token}]", bias, -100.0, 100.0)
        if self.thinking is not None and not isinstance(self.thinking, bool):
            raise InvalidSamplingError("thinking must be true or false")
        if self.thinking_budget_tokens is not None:
            _int_in("thinking_budget_tokens", self.thinking_budget_tokens, 1, None)
        if len(self.stop) > MAX_STOP_SEQUENCES:
            raise InvalidSamplingError(f"at most {MAX_STOP_SEQUENCES} stop sequences")
        for i, s in enumerate(self.stop):
            if not isinstance(s, str) or not s:
                raise InvalidSamplingError("stop sequences must be non-empty strings")
            if _has_surrogate(s):
                # The loop encodes stops to UTF-8 to match them against token bytes.
                raise InvalidSamplingError(f"stop sequence {i} contains a lone surrogate; "
                                           "it is not valid Unicode text")

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0

    def with_seed(self) -> SamplingParams:
        """Fix the seed now, so the same request can be reproduced later."""
        if self.seed is not None:
            return self
        return replace(self, seed=secrets.randbelow(2**32 - 1))


def _bias_pairs(value: object) -> tuple[tuple[int, float], ...]:
    """``{token id: bias}`` (ids as ints or decimal strings, as JSON objects carry them) or pairs."""
    items = value.items() if isinstance(value, dict) else value
    if not isinstance(items, list | tuple) and not isinstance(value, dict):
        raise InvalidSamplingError("logit_bias must map token ids to biases")
    pairs: list[tuple[int, float]] = []
    for item in items:  # type: ignore[union-attr]
        if not isinstance(item, list | tuple) or len(item) != 2:
            raise InvalidSamplingError("logit_bias must map token ids to biases")
        token, bias = item
        if isinstance(token, str):
            if not token.isdigit():
                raise InvalidSamplingError(f"logit_bias keys must be token ids, got {token!r}")
            token = int(token)
        pairs.append((token, bias))
    return tuple(pairs)


def _has_surrogate(text: str) -> bool:
    return not text.isascii() and any("\ud800" <= c <= "\udfff" for c in text)


def _int_in(name: str, value: object, low: int, high: int | None) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidSamplingError(f"{name} must be an integer, got {value!r}")
    if value < low or (high is not None and value > high):
        bound = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise InvalidSamplingError(f"{name} must be {bound}, got {value}")


def _float_in(
    name: str, value: object, low: float, high: float, *, low_open: bool = False
) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InvalidSamplingError(f"{name} must be a finite number, got {value!r}")
    too_low = value <= low if low_open else value < low
    if too_low or value > high:
        left = "(" if low_open else "["
        raise InvalidSamplingError(f"{name} must be in {left}{low}, {high}], got {value}")
