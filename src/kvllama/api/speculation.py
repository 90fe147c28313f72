"""``Engine.draft_tokens`` and ``Engine.verify``: speculation's two steps as public calls.

erllama offers them so that a caller can run its own speculation loop. Here
``draft_tokens`` is the engine's prompt-lookup drafter (decoding/speculation.py)
and ``verify`` answers with what greedy decoding of ``tokens`` produces next:
the longest prefix of ``draft`` it agrees with, and the token after that.

On kvllama's patched llama.cpp build the answer takes one decode-class forward
pass over the draft, on the kept sequence that holds ``tokens`` (decoding/verify.py;
the first call for a prefix computes it with a one-token completion, which
leaves it there). Elsewhere, or without kept sequences, it is a greedy completion
of ``len(draft) + 1`` tokens. Either way the answer is the engine's own greedy
continuation, exactly.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from kvllama.decoding.speculation import MAX_DRAFT, ngram_draft
from kvllama.errors import InvalidRequestError

if TYPE_CHECKING:
    from kvllama.api.engine import Engine

# Longest draft ``verify`` takes (its rows are one forward pass).
MAX_VERIFY = 64


def draft_tokens(engine: Engine, model_id: str, tokens: Sequence[int], n: int) -> list[int]:
    """Up to ``n`` tokens that followed the latest earlier occurrence of the last 3/2/1 tokens."""
    if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= MAX_DRAFT:
        raise InvalidRequestError(f"n must be a draft length in 0..{MAX_DRAFT}, got {n!r}")
    engine.prompt_tokens(model_id, list(tokens))  # checks the ids
    return list(ngram_draft(list(tokens), n))


def verify(
    engine: Engine, model_id: str, tokens: Sequence[int], draft: Sequence[int]
) -> tuple[int, int | None]:
    """(how many draft tokens greedy decoding accepts, the token after them; None at the end)."""
    tokens, draft = list(tokens), list(draft)
    if len(draft) > MAX_VERIFY:
        raise InvalidRequestError(f"draft has {len(draft)} tokens; verify takes at most {MAX_VERIFY}")
    engine.prompt_tokens(model_id, [*tokens, *draft])  # checks the ids
    for attempt in range(2):
        with engine.models.use(model_id) as model:
            loop = model.loop
            shape = loop.backend.shape
            if not (shape.per_pass_kernels and len(tokens) + len(draft) < shape.n_ctx_seq):
                break
            answer = loop.call(lambda held=loop: held.verify_held(tokens, draft)).result()
        if answer is not None:
            return answer
        if attempt == 0:  # compute the prefix once; its kept sequence then answers in one pass
            engine.complete(model_id, tokens, max_tokens=1, temperature=0.0)
    result = engine.complete(model_id, list(tokens), max_tokens=len(draft) + 1, temperature=0.0)
    out = result.generated_tokens
    accepted = 0
    while accepted < min(len(draft), len(out)) and out[accepted] == draft[accepted]:
        accepted += 1
    return accepted, (out[accepted] if accepted < len(out) else None)
