"""What the decode loop needs from a model, and nothing more.

Two implementations: :class:`~kvllama.backend.llama.LlamaBackend` (real
llama.cpp) and :class:`~kvllama.backend.stub.StubBackend` (deterministic, no
model, for fast tests of the scheduler and everything above it). All methods
except the vocabulary ones are called only from the model's decode thread.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from kvllama.native.batch import BatchRow
from kvllama.sampling import SamplingParams

if TYPE_CHECKING:
    from kvllama.media.projector import MediaPrompter


@dataclass(frozen=True)
class ModelDescription:
    """Facts about a loaded model, read once at load time."""

    path: str
    architecture: str
    quant: str
    n_params: int
    size_bytes: int
    n_layer: int
    n_ctx_train: int
    n_embd: int
    n_vocab: int
    description: str = ""
    chat_template: str | None = None
    special_tokens: dict[str, str] = field(default_factory=dict)
    # Sliding-window attention size (0: none); decides where a sequence may be cut.
    n_swa: int = 0


@dataclass(frozen=True)
class ContextShape:
    """The context as llama.cpp actually created it (it may round the requested sizes)."""

    n_ctx: int
    n_ctx_seq: int
    n_batch: int
    n_ubatch: int
    n_seq_max: int
    # Bytes of KV memory the context reserves, estimated from its layout.
    kv_bytes_estimate: int
    # Most decode rows per forward pass that keep outputs batch-invariant (0: no limit).
    max_decode_rows: int = 0
    # Decode-only passes take the vector kernels whatever their size (kvllama's ggml patch,
    # native/kernels.py): a pass with prompt rows may then carry at most 7 decode rows,
    # else the decoders go as a pass of their own (scheduler.decode_groups).
    per_pass_kernels: bool = False
    # The sliding window whose older cells llama.cpp leaves out of a sequence's state
    # blob (swa_full or not; 0: no sliding window): past it, resumes sit on a grid.
    swa_window: int = 0
    # Rows a prompt chunk needs to be computed like every larger one (8 on stock CPU kernels;
    # 2 with canonical decoding, where decode steps are 2-row chunks too: docs/measured/exactness.md).
    min_chunk_rows: int = 8
    canonical_decode: bool = False
    # A verify pass (a decode row plus draft rows of one sequence) computes each row exactly as
    # a one-row decode step would: canonical decoding, or the patched build's decode class.
    # Speculative decoding needs it (decoding/speculation.py).
    exact_verify: bool = False


class Sampler(Protocol):
    def accept(self, token: int) -> None: ...
    def close(self) -> None: ...


class Backend(Protocol):
    description: ModelDescription
    shape: ContextShape
    # The model's projector, if it was loaded with one (images and audio in prompts).
    media: MediaPrompter | None

    # --- vocabulary: pure, callable from any thread ---
    def tokenize(self, text: str, *, add_special: bool = True,
                 parse_special: bool = False) -> list[int]: ...
    def piece(self, token: int, special: bool = False) -> bytes: ...
    def detokenize(self, tokens: Sequence[int]) -> str: ...
    def is_eog(self, token: int) -> bool: ...

    def new_sampler(self, params: SamplingParams) -> Sampler:
        """Any thread: grammar parsing happens here, before a request reaches the loop."""

    def abort(self) -> None:
        """Any thread: stop the forward pass running now (decode raises DecodeAbortedError)."""

    # --- decode thread only ---
    def decode(self, rows: Sequence[BatchRow], adapters: tuple[tuple[str, float], ...] = (),
               decode_only: bool = False) -> None:
        """One forward pass with these LoRA adapters (id, scale) applied to all its rows;
        ``decode_only``: every row is a decode row (a sequence's next token, or its draft tokens
        to verify), so the pass takes the decode kernel class (native/kernels.py)."""
    def decode_media(self, seq_id: int, start: int, rows: Any, non_causal: bool, want_logits: bool,
                     adapters: tuple[tuple[str, float], ...] = ()) -> int:
        """A medium's embedding rows (``(n, n_embd)`` floats) at positions ``start``...; attention
        both ways inside it when ``non_causal``; logits for the last row when ``want_logits``
        (its index in the pass is returned)."""
    def load_adapter(self, adapter_id: str, path: str) -> str:
        """Load a LoRA adapter (decode thread); its file's sha256."""
    def unload_adapter(self, adapter_id: str) -> None: ...
    def adapter_sha256(self, adapter_id: str) -> str:
        """Any thread; InvalidRequestError if no adapter has that id."""
    def sample(self, sampler: Sampler, row_index: int, ban: tuple[int, ...] = ()) -> int:
        """Sample batch row ``row_index``; tokens in ``ban`` cannot be drawn."""
    def logprobs(self, sampler: Sampler, row_index: int, token: int,
                 top_n: int) -> tuple[float, tuple[tuple[int, float], ...]]:
        """``token``'s log-probability at that row, and the ``top_n`` likeliest (id, logprob)."""
    @property
    def eog_ids(self) -> tuple[int, ...]:
        """Every end-of-generation token of the vocabulary."""
    def clear_sequence(self, seq_id: int, from_pos: int = 0) -> None:
        """Forget the sequence's KV from ``from_pos`` on (all of it by default)."""
    def truncate_sequence(self, seq_id: int, n_keep: int) -> bool:
        """Keep the first ``n_keep`` tokens; False if the memory cannot cut there (sliding window)."""

    def move_sequence(self, src: int, dst: int) -> None:
        """Move a whole sequence to another, empty id (0 <= dst < n_seq_max)."""
    def copy_sequence(self, src: int, dst: int) -> None:
        """Copy a whole sequence to another (free) id; the source keeps its KV."""

    def sequence_state(self, seq_id: int) -> bytes:
        """The sequence's KV state as an opaque blob (llama_state_seq_get_data)."""

    def restore_sequence(self, seq_id: int, blob: bytes) -> bool:
        """Load a blob from sequence_state into ``seq_id``; False if llama.cpp refused it."""

    def rebuild(self) -> None:
        """Replace a context llama.cpp reported broken with a fresh one (all sequences lost)."""

    def embed(self, tokens: Sequence[int]) -> list[float]:
        """Any thread, one caller at a time: embeddings use a context of their own."""

    def close(self) -> None: ...
