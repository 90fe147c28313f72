"""A tiny random-weight Gemma 3 GGUF, for fast real-llama.cpp tests and per-token cost.

The default model (Gemma 3 270M) spends most of each decode step in its own
forward pass, which hides what the engine itself costs per token: scheduling,
sampling, detokenising, events, the KV cache. This module writes a model with
the same architecture and the same 262,144-token tokenizer (every
``tokenizer.*`` field is copied from the source GGUF) but 2 layers of width 32,
so a forward pass is little more than the 262,144 x 32 output projection (a few
milliseconds at most on a CPU, several times less than the 270M) and the
engine's own per-token cost shows.

The weights are seeded random numbers: the text it writes is gibberish, but
every token is real llama.cpp computation (attention, sliding window, KV
cache, sampling over the full vocabulary), and the same seed always gives the
same bytes. The file is about 23 MB, mostly the F16 token embedding.

The source's metadata entries are copied byte for byte (so every value keeps
its exact GGUF type) by a small reader of the key-value section:
``gguf.GGUFReader`` takes 10-20 s to parse the 262,144-entry tokenizer arrays
one element at a time, this takes a fraction of a second.
"""

from __future__ import annotations

import mmap
import os
import struct
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf
import numpy as np

ARCH = "gemma3"
# Bump when the recipe below changes, so cached copies are rewritten.
RECIPE_VERSION = "v1"

# Overrides of the source model's ``gemma3.*`` fields; the rest (context length,
# rope, RMS-norm epsilon, sliding window 512) are copied as they are.
HPARAMS: dict[str, int] = {
    "embedding_length": 32,
    "block_count": 2,
    "feed_forward_length": 64,
    "attention.head_count": 2,
    "attention.head_count_kv": 1,
    "attention.key_length": 32,
    "attention.value_length": 32,
}
WEIGHT_STD = 0.05

_VT = gguf.GGUFValueType
_SCALAR_FORMATS: dict[int, str] = {
    _VT.UINT8: "<B", _VT.INT8: "<b", _VT.UINT16: "<H", _VT.INT16: "<h",
    _VT.UINT32: "<I", _VT.INT32: "<i", _VT.FLOAT32: "<f", _VT.BOOL: "<?",
    _VT.UINT64: "<Q", _VT.INT64: "<q", _VT.FLOAT64: "<d",
}
_GGML_TYPES: dict[np.dtype[Any], int] = {
    np.dtype(np.float16): gguf.GGMLQuantizationType.F16,
    np.dtype(np.float32): gguf.GGMLQuantizationType.F32,
}
_BLOCK_NORMS = ("attn_norm", "post_attention_norm", "ffn_norm", "post_ffw_norm")


@dataclass(frozen=True)
class _Entry:
    """One metadata entry of the source: its type, and its value bytes as in the file."""

    vtype: int
    raw: bytes  # the type tag and the value, exactly as the file stores them
    value: Any  # a scalar, a string (bytes), or for an array its item count


def write_tiny_model(path: str | Path, *, source: str | Path | None = None, seed: int = 0,
                     hparams: dict[str, int] | None = None, name: str = "tiny random Gemma 3") -> Path:
    """Write the tiny model to ``path`` (source None: the embedded default model).

    ``hparams`` replaces :data:`HPARAMS` (the same keys): the benchmarks' bigger
    random-weight model is this recipe at another size (bench/kquant_model.py).
    """
    shape = dict(hparams or HPARAMS)
    if source is None:
        from kvllama.models.default import default_model_path

        source = default_model_path()
    entries = _read_metadata(Path(source))
    arch = entries.get("general.architecture")
    if arch is None or arch.value != ARCH.encode():
        raise ValueError(f"source model {source} is not a {ARCH} GGUF")
    if "tokenizer.ggml.tokens" not in entries:
        raise ValueError(f"source model {source} has no tokenizer.ggml.tokens")
    n_vocab = entries["tokenizer.ggml.tokens"].value
    out = Path(path)
    _write_gguf(out, _metadata(entries, seed, shape, name), list(_tensors(n_vocab, seed, shape)))
    return out


def tiny_model_path() -> Path:
    """The cached tiny model (seed 0) under the user cache dir, written once if missing."""
    return cached_model(f"tiny-gemma3-{RECIPE_VERSION}.gguf", write_tiny_model)


def cached_model(name: str, write: Callable[[Path], object]) -> Path:
    """``name`` under the user cache dir (~/.cache/kvllama), written by ``write`` once if missing.

    Written to a temporary file beside it and renamed, so a crash never leaves a
    truncated model under the final name.
    """
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    target = Path(base) / "kvllama" / name
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        out = Path(tmp) / name
        write(out)
        os.replace(out, target)
    return target


# --- reading the source's metadata ---------------------------------------------


def _read_metadata(path: Path) -> dict[str, _Entry]:
    """Every key-value entry of a little-endian GGUF (v2/v3), in file order."""
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        magic, version, _n_tensors, n_kv = struct.unpack_from("<IIQQ", buf, 0)
        if magic != gguf.GGUF_MAGIC or version not in (2, 3):
            raise ValueError(f"{path} is not a little-endian GGUF v2/v3 file")
        entries: dict[str, _Entry] = {}
        pos = 24
        for _ in range(n_kv):
            key, pos = _read_string(buf, pos)
            start = pos
            (vtype,) = struct.unpack_from("<I", buf, pos)
            value, pos = _read_value(buf, pos + 4, vtype)
            entries[key.decode()] = _Entry(vtype, buf[start:pos], value)
    return entries


def _read_string(buf: mmap.mmap, pos: int) -> tuple[bytes, int]:
    (n,) = struct.unpack_from("<Q", buf, pos)
    return buf[pos + 8 : pos + 8 + n], pos + 8 + n


def _read_value(buf: mmap.mmap, pos: int, vtype: int) -> tuple[Any, int]:
    """One value at ``pos``: (the value, or an array's item count; the position after it)."""
    if vtype in _SCALAR_FORMATS:
        fmt = _SCALAR_FORMATS[vtype]
        return struct.unpack_from(fmt, buf, pos)[0], pos + struct.calcsize(fmt)
    if vtype == _VT.STRING:
        return _read_string(buf, pos)
    if vtype != _VT.ARRAY:
        raise ValueError(f"unknown GGUF value type {vtype} at byte {pos}")
    sub, count = struct.unpack_from("<IQ", buf, pos)
    pos += 12
    if sub in _SCALAR_FORMATS:
        return count, pos + count * struct.calcsize(_SCALAR_FORMATS[sub])
    if sub != _VT.STRING:
        raise ValueError(f"unsupported GGUF array of type {sub} at byte {pos}")
    unpack = struct.Struct("<Q").unpack_from
    for _ in range(count):
        pos += 8 + unpack(buf, pos)[0]
    return count, pos


# --- the tiny model --------------------------------------------------------------


def _metadata(source: dict[str, _Entry], seed: int, hparams: dict[str, int],
              name: str) -> list[tuple[str, bytes]]:
    """general.* for the model, then the source's gemma3.* (scaled) and tokenizer.*."""
    out = [
        ("general.architecture", _string_raw(ARCH)),
        ("general.name", _string_raw(f"{name} (seed {seed})")),
        ("general.file_type", _scalar_raw(_VT.UINT32, gguf.LlamaFileType.MOSTLY_F16)),
    ]
    overrides = {f"{ARCH}.{key}": value for key, value in hparams.items()}
    for key, entry in source.items():
        if key in overrides:
            vtype = entry.vtype if entry.vtype in _SCALAR_FORMATS else _VT.UINT32
            out.append((key, _scalar_raw(vtype, overrides.pop(key))))
        elif key.startswith((f"{ARCH}.", "tokenizer.")):
            out.append((key, entry.raw))
    out.extend((key, _scalar_raw(_VT.UINT32, value)) for key, value in overrides.items())
    return out


def _tensors(n_vocab: int, seed: int, hparams: dict[str, int]) -> Iterator[tuple[str, np.ndarray]]:
    """Every tensor in a fixed order, as numpy arrays (shape: GGUF's ne reversed)."""
    n_embd, n_ff = hparams["embedding_length"], hparams["feed_forward_length"]
    head_dim = hparams["attention.key_length"]
    q_dim = hparams["attention.head_count"] * head_dim
    kv_dim = hparams["attention.head_count_kv"] * head_dim
    rng = np.random.default_rng(seed)

    def weight(rows: int, cols: int) -> np.ndarray:
        return (rng.standard_normal((rows, cols), dtype=np.float32) * WEIGHT_STD).astype(np.float16)

    def norm(n: int) -> np.ndarray:  # Gemma GGUFs store norm weights as 1 + w
        return np.ones(n, dtype=np.float32)

    yield "token_embd.weight", weight(n_vocab, n_embd)
    yield "output_norm.weight", norm(n_embd)
    for b in range(hparams["block_count"]):
        p = f"blk.{b}."
        for name in _BLOCK_NORMS:
            yield f"{p}{name}.weight", norm(n_embd)
        yield f"{p}attn_q_norm.weight", norm(head_dim)
        yield f"{p}attn_k_norm.weight", norm(head_dim)
        yield f"{p}attn_q.weight", weight(q_dim, n_embd)
        yield f"{p}attn_k.weight", weight(kv_dim, n_embd)
        yield f"{p}attn_v.weight", weight(kv_dim, n_embd)
        yield f"{p}attn_output.weight", weight(n_embd, q_dim)
        yield f"{p}ffn_gate.weight", weight(n_ff, n_embd)
        yield f"{p}ffn_up.weight", weight(n_ff, n_embd)
        yield f"{p}ffn_down.weight", weight(n_embd, n_ff)


# --- writing GGUF v3 -------------------------------------------------------------


def _pack_string(s: str | bytes) -> bytes:
    data = s.encode() if isinstance(s, str) else s
    return struct.pack("<Q", len(data)) + data


def _string_raw(s: str) -> bytes:
    return struct.pack("<I", _VT.STRING) + _pack_string(s)


def _scalar_raw(vtype: int, value: int | float | bool) -> bytes:
    return struct.pack("<I", vtype) + struct.pack(_SCALAR_FORMATS[vtype], value)


def _pad(n: int, align: int = gguf.GGUF_DEFAULT_ALIGNMENT) -> int:
    return (n + align - 1) // align * align


def _write_gguf(path: Path, kvs: list[tuple[str, bytes]], tensors: list[tuple[str, np.ndarray]]) -> None:
    """A GGUF v3 file: header, metadata, tensor infos, then the aligned tensor data."""
    parts = [struct.pack("<IIQQ", gguf.GGUF_MAGIC, 3, len(tensors), len(kvs))]
    parts += [_pack_string(key) + raw for key, raw in kvs]
    offset = 0
    for name, t in tensors:
        dims = t.shape[::-1]  # GGUF lists ne0 (the contiguous axis) first
        parts.append(_pack_string(name) + struct.pack(f"<I{len(dims)}Q", len(dims), *dims))
        parts.append(struct.pack("<IQ", _GGML_TYPES[t.dtype], offset))
        offset += _pad(t.nbytes)
    with open(path, "wb") as f:
        for part in parts:
            f.write(part)
        f.write(bytes(_pad(f.tell()) - f.tell()))
        for _, t in tensors:
            f.write(np.ascontiguousarray(t, dtype=t.dtype.newbyteorder("<")).tobytes())
            f.write(bytes(_pad(t.nbytes) - t.nbytes))
