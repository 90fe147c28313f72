"""A model's projector as the engine uses it: prompts with media become ids and a layout.

Tokenizing happens in the caller's thread (with the request's other
preparation); encoding happens on the decode thread when the loop reaches
a span that no warm start covered, so a medium the cache or a live
sequence already holds is never encoded. Encoded embeddings are kept in a
small LRU by the span's digest: the same image in the next request (a
retry, another user's) is decoded from them without encoding it again.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from hashlib import blake2b

import numpy as np

from kvllama.errors import InvalidMediaError
from kvllama.media.inputs import Medium
from kvllama.media.layout import MediaSpan, PromptLayout, placeholders, tag_short_segments
from kvllama.native.projector import AUDIO, IMAGE, TEXT, NativeProjector

EMBEDDING_MEMO_BYTES = 64 << 20
_KINDS = {IMAGE: "image", AUDIO: "audio"}


class MediaPrompter:
    """One per model with a projector (owned by its backend)."""

    def __init__(self, native: NativeProjector, n_embd: int, min_rows: int, n_ubatch: int,
                 memo_bytes: int = EMBEDDING_MEMO_BYTES) -> None:
        self.native = native
        self.n_embd = n_embd
        self.min_rows = min_rows
        self._n_ubatch = n_ubatch
        self._memo: OrderedDict[bytes, np.ndarray] = OrderedDict()
        self._memo_bytes, self._memo_limit = 0, memo_bytes
        self._mu = threading.Lock()
        # Encodes run (counted for tests and /metrics: a warm start must not encode).
        self.encodes = 0

    @property
    def modalities(self) -> tuple[str, ...]:
        native = self.native
        return ("text",) + (("image",) if native.vision else ()) + (("audio",) if native.audio else ())

    @property
    def marker(self) -> str:
        return self.native.marker

    def tokenize(self, text: str, media: Sequence[Medium], add_special: bool
                 ) -> tuple[tuple[int, ...], PromptLayout]:
        """The prompt's ids (placeholders for media positions, short segments tagged) and layout."""
        found = text.count(self.marker)
        if found != len(media):
            raise InvalidMediaError(f"the prompt has {found} media markers ({self.marker}) for "
                                    f"{len(media)} media: give one marker per image or audio clip")
        chunks = self.native.tokenize(text, [m.data for m in media], add_special)
        tokens: list[int] = []
        spans: list[MediaSpan] = []
        ordinal: dict[bytes, int] = {}
        for c in chunks:
            if c.kind == TEXT:
                tokens.extend(c.tokens)
                continue
            k = ordinal[c.medium_id] = ordinal.get(c.medium_id, -1) + 1
            digest = blake2b(c.medium_id + k.to_bytes(4, "little"), digest_size=16).digest()
            self._check_fits(c.n_tokens, c.kind)
            spans.append(MediaSpan(len(tokens), c.n_tokens, digest, _KINDS[c.kind], chunk=c))
            tokens.extend(placeholders(digest, c.n_tokens))
        layout = PromptLayout(tuple(spans), len(tokens), self.min_rows)
        return tag_short_segments(tokens, spans, self.min_rows), layout

    def _check_fits(self, n_tokens: int, kind: int) -> None:
        """An image attended both ways must be one ubatch (llama.cpp cannot split it)."""
        if kind == IMAGE and n_tokens > self._n_ubatch:
            raise InvalidMediaError(f"an image takes {n_tokens} positions with this projector but the "
                                    f"model was loaded with n_ubatch={self._n_ubatch}; load it with "
                                    f"n_batch and n_ubatch >= {n_tokens}")

    def non_causal(self, span: MediaSpan) -> bool:
        return self.native.non_causal(span.chunk)  # type: ignore[arg-type]

    def embeddings(self, span: MediaSpan) -> np.ndarray:
        """The span's embedding rows: from the memo, else encoded now (decode thread)."""
        with self._mu:
            rows = self._memo.get(span.digest)
            if rows is not None:
                self._memo.move_to_end(span.digest)
                return rows
        rows = self.native.encode(span.chunk, self.n_embd)  # type: ignore[arg-type]
        with self._mu:
            self.encodes += 1
            if span.digest not in self._memo and rows.nbytes <= self._memo_limit:
                self._memo[span.digest] = rows
                self._memo_bytes += rows.nbytes
                while self._memo_bytes > self._memo_limit:
                    _, old = self._memo.popitem(last=False)
                    self._memo_bytes -= old.nbytes
        return rows

    def close(self) -> None:
        with self._mu:
            self._memo.clear()
            self._memo_bytes = 0
        self.native.close()
