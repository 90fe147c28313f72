"""What identifies a model's KV state: the cache key root for a loaded model.

The root must cover everything that changes a sequence's state *bytes*
(a blob llama.cpp would refuse or misread) or its *numbers* (a blob that
restores fine but would not give the tokens a cold run gives here):

- bytes: the model file (full sha256 by default; ``fingerprint="fast"``
  hashes size, mtime and the GGUF header instead, for huge files on slow
  disks), the KV cache types, the KV layout (``kv_unified``, ``n_seq_max``:
  a non-unified blob embeds one cell list per stream, ``swa_full``), and the
  llama.cpp state format version;
- numbers (:func:`numerics`): flash attention, the ubatch shapes prompts are
  computed in (``n_batch``, ``n_ubatch``, the prefill chunk and its
  alignment), the per-sequence context (it caps
  how many KV cells an attention pass spans), CPU weight repacking
  (``use_extra_bufts``), GPU offload, and the llama.cpp build with the CPU
  features its kernels were picked for (a disk tier may be copied to, or
  shared with, another machine).

Options that cannot change a row's bytes or numbers stay out, each with the
reason in :data:`NOT_IN_ROOT`; every ModelOptions field must be in exactly
one of :data:`IN_ROOT` and :data:`NOT_IN_ROOT` (a unit test checks), so a new
option cannot silently share rows across configurations.

LoRA adapters fold in later through ``KeyRoot.adapters``.
"""

from __future__ import annotations

import functools
import hashlib
import os

from tqdm import tqdm

from kvllama.backend.protocol import Backend
from kvllama.decoding.loop import PREFILL_ALIGN
from kvllama.kvcache import KeyRoot
from kvllama.kvcache.keys import NumericValue
from kvllama.native.kernels import build_tag, cpu_kernel_mode
from kvllama.options import ModelOptions

_CHUNK = 4 << 20

# ModelOptions fields folded into the root (directly, or through the context shape they produce).
IN_ROOT = frozenset({
    "type_k", "type_v", "flash_attn", "kv_unified", "n_seq_max", "swa_full", "fingerprint",
    "n_ctx", "n_batch", "n_ubatch", "prefill_chunk_size", "use_extra_bufts",
    "n_gpu_layers", "split_mode", "main_gpu", "tensor_split", "mmproj",
})
NOT_IN_ROOT = {
    "n_threads": "ggml splits work by output rows and each output is reduced by one thread in a "
                 "fixed order: a 192-token prompt's blob is byte-identical with 1 and 2 threads",
    "n_threads_batch": "as n_threads",
    "use_mmap": "the same weight bytes, read another way",
    "decode_timeout": "aborts a pass; never changes what a finished pass computed",
    "keep_finished": "keeps a finished sequence in its slot; rows are saved as without it",
    "burst_window_ms": "when requests are admitted, not how their rows are computed",
    "settle_replies": "settled replies are computed as prompt chunks, like every row's tokens",
    "canonical_decode": "rows hold prompt-chunk KV either way; the kernel mode it needs is in the root",
    "speculative_draft": "accepted drafts are the tokens decoding computes, row for row",
    "draft_model": "the target verifies every draft token: drafts change speed, never tokens or rows",
    "max_decode_rows": "rows hold KV from prompt chunks only, never from decode rows (decoding/warm.py)",
    "chat_template": "changes the token ids of a request, and the ids are the key",
    "markers": "changes how output is parsed, not the state",
    "thinking_markers": "as markers",
    "tool_call_markers": "as markers",
}
# n_ctx enters as n_ctx_seq (the share a sequence sees); fingerprint as the prefix of
# model_fingerprint; split_mode, main_gpu and tensor_split only when layers are offloaded
# (nothing runs on a device otherwise, so they must not split the cache).


def file_fingerprint(path: str, mode: str) -> str:
    """The model file's identity for cache keys ("sha256:..." or "fast:...").

    Hashing a multi-GB GGUF takes seconds to minutes at load, so the sha256
    pass draws a progress bar on a terminal (stderr a TTY), and only once it
    has run for a second: small models load without a flash of output.
    """
    if path.startswith("<"):  # the stub backend
        return path
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        st = os.fstat(f.fileno())
        if mode == "fast":
            digest.update(f"{st.st_size}:{st.st_mtime_ns}".encode())
            digest.update(f.read(1 << 20))
            return "fast:" + digest.hexdigest()
        with tqdm(total=st.st_size, desc=f"hashing {os.path.basename(path)}", unit="B", unit_scale=True,
                  unit_divisor=1024, disable=None, delay=1.0, leave=False) as bar:
            while chunk := f.read(_CHUNK):
                digest.update(chunk)
                bar.update(len(chunk))
    return "sha256:" + digest.hexdigest()


def state_version() -> str:
    try:
        import llama_cpp

        from kvllama.native.library import package_version

        return f"llama-cpp-python {package_version()} seq-state {llama_cpp.LLAMA_STATE_SEQ_VERSION}"
    except ImportError:  # pragma: no cover - the stub runs without it
        return "stub"


@functools.cache
def system_info() -> str:
    """llama.cpp's build and CPU-feature line: which kernels compute the numbers."""
    try:
        from kvllama.native.library import llama

        raw = llama().llama_print_system_info()
    except ImportError:  # pragma: no cover - the stub runs without it
        return "stub"
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
    return " ".join(text.split())


def numerics(backend: Backend, options: ModelOptions, *, stub: bool) -> dict[str, NumericValue]:
    """The options that change the numbers a row holds (see the module docstring)."""
    shape = backend.shape
    # The decode loop's prefill chunk and alignment (ModelLoop.__init__ computes them the same way):
    # chunk ends decide which ubatch shape every prompt token is computed in.
    chunk = min(options.effective_chunk_size(), shape.n_batch, shape.n_ubatch)
    values: dict[str, NumericValue] = {
        "n_ctx_seq": shape.n_ctx_seq,
        "n_batch": shape.n_batch,
        "n_ubatch": shape.n_ubatch,
        "prefill_chunk": chunk,
        "prefill_align": min(PREFILL_ALIGN, chunk),
        "use_extra_bufts": options.use_extra_bufts,
        # What a row holds: 2 = prompt-chunk KV only, on the resume grid above a sliding
        # window (decoding/warm.py). Rows of layout 1 carried reply rows and off-grid lengths.
        "row_layout": 2,
        # ggml's CPU kernel choice for K-quant weights (native/kernels.py): other numbers.
        "cpu_tiled_mm": cpu_kernel_mode(),
        # The bootstrap's build tag (flags and a hash of scripts/patches/): rows from another
        # build never restore, though a patch may leave prompt rows' numbers as they were.
        "llama_build": "stub" if stub else build_tag(),
        "n_gpu_layers": options.n_gpu_layers,
        "system": "stub" if stub else system_info(),
    }
    if options.n_gpu_layers != 0:
        values.update(split_mode=options.split_mode, main_gpu=options.main_gpu,
                      tensor_split=",".join(repr(x) for x in options.tensor_split))
    if options.mmproj:
        # The projector file (its weights and preprocessing settings: image size, mean, std, mel
        # bins) and how media positions are keyed (kvllama.media.layout's placeholders, version 1):
        # the same image under another projector never restores a row.
        values.update(projector=file_fingerprint(options.mmproj, options.fingerprint), media_ids=1)
    return values


def key_root(backend: Backend, options: ModelOptions) -> KeyRoot:
    path = backend.description.path
    stub = path.startswith("<")
    return KeyRoot(
        model_fingerprint=file_fingerprint(path, options.fingerprint),
        type_k=options.type_k,
        type_v=options.type_v,
        flash_attn=options.flash_attn,
        kv_unified=options.kv_unified,
        n_seq_max=backend.shape.n_seq_max,
        swa_full=options.swa_full,
        state_version="stub" if stub else state_version(),
        numerics=numerics(backend, options, stub=stub),
    )
