"""A deterministic backend with no model, for fast tests of everything above it.

Tokens are the bytes of the UTF-8 text (plus BOS 256 and EOS 257). The "model"
predicts the next token as a hash of the sequence so far, so outputs are
reproducible and depend on the context, the way a real model's do. The stub
also checks what a real KV cache would enforce (positions contiguous per
sequence, batch within n_batch) and records every decode call, so scheduler
tests can assert what went into each forward pass.
"""

from __future__ import annotations

import hashlib
import json
import random
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field

from kvllama.backend.protocol import ContextShape, ModelDescription
from kvllama.errors import (
    BatchOverflowError,
    DecodeAbortedError,
    DecodeError,
    GrammarError,
    InvalidRequestError,
)
from kvllama.native.batch import BatchRow
from kvllama.sampling import SamplingParams

BOS, EOS = 256, 257
_ALPHABET = b"abcdefghijklmnopqrstuvwxyz     .,"


@dataclass
class StubSampler:
    params: SamplingParams
    rng: random.Random
    closed: bool = False
    accepted: list[int] = field(default_factory=list)

    def accept(self, token: int) -> None:
        self.accepted.append(token)

    def close(self) -> None:
        self.closed = True


@dataclass
class StubConfig:
    n_ctx_seq: int = 256
    n_batch: int = 64
    n_seq_max: int = 4
    # Emit EOS once a sequence has generated this many tokens (None: never).
    eos_after: int | None = None
    # Seconds each decode call sleeps, to give cancellation something to interrupt.
    decode_delay: float = 0.0
    # A prompt token that makes any decode containing it fail (fault injection).
    poison_token: int | None = None
    # A prompt token whose decode reports llama.cpp's "fatal error" (the context must be rebuilt).
    fatal_token: int | None = None
    # A token whose sampling raises a plain Python error (a bug in sampling code).
    crash_sample_after: int | None = None
    chat_template: str | None = None
    max_decode_rows: int = 0
    # Decode-only passes in a kernel class of their own, any size (the patched build).
    per_pass_kernels: bool = False
    # Behave like a sliding-window model whose memory cannot be cut mid-sequence.
    refuse_truncate: bool = False
    # What the model's memory estimate says (weights; the KV estimate stays 0): budget tests.
    size_bytes: int = 0
    # Decode steps as 2-row chunks (ModelOptions.canonical_decode).
    canonical_decode: bool = False


@dataclass
class _SeqState:
    tokens: list[int] = field(default_factory=list)
    prompt_len: int | None = None
    # The adapter set each token was computed with (the stub's "KV" depends on it).
    adapters: list[tuple[tuple[str, float], ...]] = field(default_factory=list)


class StubBackend:
    def __init__(self, config: StubConfig | None = None) -> None:
        self.config = config or StubConfig()
        c = self.config
        self.description = ModelDescription(
            path="<stub>", architecture="stub", quant="none", n_params=0, size_bytes=c.size_bytes,
            n_layer=1, n_ctx_train=c.n_ctx_seq, n_embd=8, n_vocab=258, description="stub",
            chat_template=c.chat_template,
            special_tokens={"bos_token": "<s>", "eos_token": "</s>"},
        )
        self.shape = ContextShape(
            n_ctx=c.n_ctx_seq * c.n_seq_max, n_ctx_seq=c.n_ctx_seq, n_batch=c.n_batch,
            n_ubatch=c.n_batch, n_seq_max=c.n_seq_max, kv_bytes_estimate=0,
            max_decode_rows=c.max_decode_rows, per_pass_kernels=c.per_pass_kernels,
            min_chunk_rows=2 if c.canonical_decode else 8, canonical_decode=c.canonical_decode,
            exact_verify=c.canonical_decode or c.per_pass_kernels,
        )
        self.media = None  # the stub takes no images or audio
        self.seqs: dict[int, _SeqState] = {}
        # Every decode call's rows, in order (tests read this).
        self.decode_log: list[list[BatchRow]] = []
        self.samplers_created = 0
        self.moves: list[tuple[int, int]] = []
        # Passes that llama.cpp's split (non-unified KV) would cut unevenly (see _uneven_split).
        self.uneven_splits = 0
        # Passes whose rows llama.cpp would compute in another kernel class than their kind's
        # (see _kernel_mismatch); every stub test checks it stays 0.
        self.kernel_mismatches = 0
        # True while a pass waits out decode_delay: abort() stops it then (tests wait on it).
        self.in_pass = False
        self.restores = 0
        self.rebuilds = 0
        # Loaded adapters (id -> a stand-in sha256), and each decode call's adapter set.
        self.adapters: dict[str, str] = {}
        self.decode_adapters: list[tuple[tuple[str, float], ...]] = []
        # Each decode call's decode_only flag (the kernels a patched build would take).
        self.decode_only_log: list[bool] = []
        self.closed = False
        self._abort = threading.Event()
        self._last_rows: list[BatchRow] = []
        self._lock = threading.Lock()

    # --- vocabulary ---------------------------------------------------------

    def tokenize(self, text: str, *, add_special: bool = True, parse_special: bool = False) -> list[int]:
        body = list(text.encode("utf-8"))
        return [BOS, *body] if add_special else body

    def piece(self, token: int, special: bool = False) -> bytes:
        return bytes([token]) if 0 <= token < 256 else b""

    def detokenize(self, tokens: Sequence[int]) -> str:
        return b"".join(self.piece(t) for t in tokens).decode("utf-8", errors="replace")

    def is_eog(self, token: int) -> bool:
        return token == EOS

    # --- decode thread ------------------------------------------------------

    def new_sampler(self, params: SamplingParams) -> StubSampler:
        if params.grammar is not None and "root" not in params.grammar:
            raise GrammarError("the GBNF grammar did not parse (no 'root' rule)")
        self.samplers_created += 1
        return StubSampler(params, random.Random(params.seed))

    def load_adapter(self, adapter_id: str, path: str) -> str:
        if adapter_id in self.adapters:
            raise InvalidRequestError(f"an adapter is loaded as {adapter_id!r} already; unload it first")
        self.adapters[adapter_id] = hashlib.sha256(path.encode()).hexdigest()
        return self.adapters[adapter_id]

    def unload_adapter(self, adapter_id: str) -> None:
        if self.adapters.pop(adapter_id, None) is None:
            raise InvalidRequestError(f"no adapter {adapter_id!r} is loaded")

    def adapter_sha256(self, adapter_id: str) -> str:
        if adapter_id not in self.adapters:
            raise InvalidRequestError(f"no adapter {adapter_id!r} is loaded for this model")
        return self.adapters[adapter_id]

    def decode_media(self, *_args: object, **_kwargs: object) -> None:
        raise InvalidRequestError("the stub backend takes no images or audio")

    def decode(self, rows: Sequence[BatchRow], adapters: tuple[tuple[str, float], ...] = (),
               decode_only: bool = False) -> None:
        if len(rows) > self.shape.n_batch:
            raise BatchOverflowError(len(rows), self.shape.n_batch)
        self._abort.clear()  # like llama.cpp's flag, lowered when a pass starts
        if self.config.decode_delay:
            self.in_pass = True
            self._abort.wait(self.config.decode_delay)
            self.in_pass = False
        if self._abort.is_set():
            self._abort.clear()
            raise DecodeAbortedError(2, "aborted")
        poison = self.config.poison_token
        if poison is not None and any(tok == poison for tok, *_ in rows):
            raise DecodeError(-1, "stub poison token")
        fatal = self.config.fatal_token
        if fatal is not None and any(tok == fatal for tok, *_ in rows):
            raise DecodeError(-3, "stub fatal error")
        for tok, pos, seq, _want in rows:
            if not 0 <= seq < self.shape.n_seq_max:
                raise DecodeError(-1, f"sequence id {seq} out of range")
            state = self.seqs.setdefault(seq, _SeqState())
            if pos != len(state.tokens):
                raise DecodeError(-1, f"seq {seq}: position {pos} after {len(state.tokens)} tokens")
            if pos >= self.shape.n_ctx_seq:
                raise DecodeError(1, f"seq {seq}: context full")
            state.tokens.append(tok)
            state.adapters.append(adapters)
        self.decode_log.append(list(rows))
        self.uneven_splits += _uneven_split(rows)
        self.kernel_mismatches += _kernel_mismatch(rows, decode_only, self.shape)
        self.decode_only_log.append(decode_only)
        self.decode_adapters.append(adapters)
        self._last_rows = list(rows)

    @property
    def eog_ids(self) -> tuple[int, ...]:
        return (EOS,)

    def logprobs(self, sampler: StubSampler, row_index: int, token: int,
                 top_n: int) -> tuple[float, tuple[tuple[int, float], ...]]:
        """A fixed distribution: the sampled token most likely, then the alphabet in order."""
        others = [t for t in _ALPHABET if t != token][: max(0, top_n - 1)]
        top = ((token, -0.25), *((t, -2.0 - i) for i, t in enumerate(others)))
        return -0.25, top[:top_n]

    def sample(self, sampler: StubSampler, row_index: int, ban: tuple[int, ...] = ()) -> int:
        _tok, pos, seq, want = self._last_rows[row_index]
        crash = self.config.crash_sample_after
        if crash is not None and pos >= crash:
            raise ZeroDivisionError("stub sampling bug")
        if not want:
            raise DecodeError(-1, f"row {row_index} has no logits")
        context = self.seqs[seq].tokens[: pos + 1]
        state = self.seqs[seq]
        if state.prompt_len is None:
            state.prompt_len = len(context)
        generated = len(context) - state.prompt_len
        if self.config.eos_after is not None and generated >= self.config.eos_after and EOS not in ban:
            return EOS
        mixed = context if not any(state.adapters[: pos + 1]) else (context, state.adapters[: pos + 1])
        digest = hashlib.blake2b(bytes(str(mixed), "utf-8"), digest_size=8).digest()
        value = int.from_bytes(digest, "little")
        if not sampler.params.greedy:
            value ^= sampler.rng.getrandbits(64)
        return _ALPHABET[value % len(_ALPHABET)]

    def clear_sequence(self, seq_id: int, from_pos: int = 0) -> None:
        state = self.seqs.get(seq_id)
        if state is None:
            return
        if from_pos <= 0:
            del self.seqs[seq_id]
        else:
            del state.tokens[from_pos:]
            del state.adapters[from_pos:]

    def truncate_sequence(self, seq_id: int, n_keep: int) -> bool:
        if self.config.refuse_truncate:
            return False
        self.clear_sequence(seq_id, n_keep) if n_keep > 0 else self.clear_sequence(seq_id)
        return True

    def copy_sequence(self, src: int, dst: int) -> None:
        state = self.seqs.get(src)
        self.seqs.pop(dst, None)
        if state is not None:
            self.seqs[dst] = _SeqState(list(state.tokens), state.prompt_len, list(state.adapters))

    def move_sequence(self, src: int, dst: int) -> None:
        if not 0 <= dst < self.shape.n_seq_max:
            raise DecodeError(-1, f"sequence id {dst} out of range")
        self.moves.append((src, dst))
        state = self.seqs.pop(src, None)
        if state is not None:
            self.seqs[dst] = state
        else:
            self.seqs.pop(dst, None)

    def sequence_state(self, seq_id: int) -> bytes:
        state = self.seqs.get(seq_id, _SeqState())
        # The adapter sets ride along, as a real state blob carries the KV they shaped.
        sets = json.dumps([[list(pair) for pair in s] for s in state.adapters]).encode()
        head = b"STUB" + len(state.tokens).to_bytes(4, "little")
        return head + b"".join(t.to_bytes(4, "little") for t in state.tokens) + sets

    def restore_sequence(self, seq_id: int, blob: bytes) -> bool:
        if not blob.startswith(b"STUB"):
            return False
        n = int.from_bytes(blob[4:8], "little")
        body, sets = blob[8 : 8 + 4 * n], blob[8 + 4 * n :]
        tokens = [int.from_bytes(body[i : i + 4], "little") for i in range(0, len(body), 4)]
        adapters = [tuple((str(i), float(s)) for i, s in one) for one in json.loads(sets or b"[]")]
        self.seqs[seq_id] = _SeqState(tokens=tokens, adapters=adapters or [()] * len(tokens))
        self.restores += 1
        return True

    def abort(self) -> None:
        self._abort.set()

    def rebuild(self) -> None:
        self.seqs.clear()
        self.rebuilds += 1

    def embed(self, tokens: Sequence[int]) -> list[float]:
        digest = hashlib.sha256(bytes(str(list(tokens)), "ascii")).digest()
        return [b / 255.0 for b in digest[:8]]

    def close(self) -> None:
        self.closed = True


def _kernel_mismatch(rows: Sequence[BatchRow], decode_only: bool, shape: ContextShape) -> bool:
    """Would a row of this pass be computed in another kernel class than its kind's?

    With per-pass kernels (the patched build), a pass flagged decode-only takes the
    decode class for every matmul, so a prompt row in it would not be computed
    as prompt rows are (every decode and draft row wants logits; a prompt chunk's
    rows but its last do not); an unflagged pass takes the stock choice, under
    which a ubatch of 8+ decode rows would take the tiled kernels. Without
    per-pass kernels ``max_decode_rows`` caps decode passes instead. A decode row
    is a sequence's only row in the pass (canonical 2-row steps are prompt-class).
    """
    per_seq: dict[int, int] = {}
    for _tok, _pos, seq, _want in rows:
        per_seq[seq] = per_seq.get(seq, 0) + 1
    decode_rows = sum(1 for n in per_seq.values() if n == 1)
    if not shape.per_pass_kernels:
        cap = shape.max_decode_rows
        return bool(cap) and decode_rows > cap
    if decode_only:
        return not all(want for _tok, _pos, _seq, want in rows)
    return decode_rows >= 8


def _uneven_split(rows: Sequence[BatchRow]) -> bool:
    """Would llama.cpp's ``split_equal`` (non-unified KV) cut this batch's first ubatch unevenly?

    It starts a ubatch at the first row's sequence and, in batch order, adds
    every sequence whose id is one more than the last added; then it takes
    the same number of rows from each. Sequences with different row counts
    in one set mean prompt chunks cut into pieces of another size (computed
    in another kernel class on CPU K-quant models).
    """
    if not rows:
        return False
    counts: dict[int, int] = {}
    for _tok, _pos, seq, _want in rows:
        counts[seq] = counts.get(seq, 0) + 1
    members = [rows[0][2]]
    for _tok, _pos, seq, _want in rows:
        if seq == members[-1] + 1:
            members.append(seq)
    return len({counts[m] for m in members}) > 1
