"""Live sequences as prefix sources: a new prompt copies the cells another sequence already holds.

Every sequence in the context holds canonical KV for some leading tokens: a
running request the prompt chunks it computed so far (``Request.exact_len``),
a parked session and a kept sequence their cut-back context. A new request whose
prompt starts like one of them copies that sequence into a slot of its own
(llama.cpp's whole-stream ``seq_cp``, applied at the next decode) and cuts
the copy back to the shared part, leaving the source as it was. So the second
user of a shared prompt skips its prefill even while the first one is still
decoding its reply, and one user's kept sequence serves another without being
ended.

Exact for the same reason a kept sequence's reuse is (docs/measured/exactness.md): the
copied cells were computed by prompt chunks of 8+ rows, which a cold prefill
computes bit for bit the same, the copy keeps their cell layout, and at least
``min_chunk_rows`` prompt tokens are left to prefill. On a sliding-window
model a live sequence holds every cell only with ``swa_full`` (the default);
a sequence restored from a row holds only its window, and the cut is then
refused (``Backend.truncate_sequence``), so the request goes on without it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from kvllama.tokens import shared_prefix

# A copy is worth its cost (a whole-stream memcpy at the next decode) from one cache block on.
MIN_LIVE_SHARE = 64

Tenant = tuple[str | None, tuple[tuple[str, float], ...]]


@dataclass(frozen=True)
class LiveSource:
    # The Request, Session or KeptSequence holding the sequence; read its ``seq_id`` when copying,
    # since admission may move idle sequences to other ids first.
    holder: object
    shared: int
    # The prompt repeats or continues every token the source holds (taking a kept sequence over
    # loses nothing).
    whole: bool


def best_live_source(
    prompt: Sequence[int], tenant: Tenant, limit: int, at_least: int,
    candidates: Iterable[tuple[object, Sequence[int], Tenant]],
) -> LiveSource | None:
    """The candidate of this tenant sharing the most of ``prompt`` (at most ``limit`` tokens), if it
    shares at least ``at_least``. Earlier candidates win ties."""
    best: LiveSource | None = None
    for holder, tokens, their_tenant in candidates:
        if their_tenant != tenant or not tokens:
            continue
        common = shared_prefix(tokens, prompt)
        n = min(common, limit)
        if n >= at_least and (best is None or n > best.shared):
            best = LiveSource(holder, n, whole=common == len(tokens))
    return best
