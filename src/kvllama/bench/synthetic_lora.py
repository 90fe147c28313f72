"""Small synthetic LoRA adapters as GGUF files, for tests of adapter support.

No LoRA adapter for the embedded default model (Gemma 3 270M) is published as
a package, so tests write their own: seeded random low-rank weights for some of
the base model's per-layer projections, in the layout that llama.cpp's
``convert_lora_to_gguf.py`` writes and ``llama_adapter_lora_init`` reads
(``src/llama-adapter.cpp``):

* metadata ``general.architecture`` (the base model's, checked against it on
  load), ``general.type = "adapter"``, ``adapter.type = "lora"`` and
  ``adapter.lora.alpha`` (F32);
* for each adapted weight ``W`` (``blk.N.<target>.weight``, ggml shape
  ``ne = [n_in, n_out]``) a pair ``W.lora_a`` with ``ne = [n_in, rank]`` and
  ``W.lora_b`` with ``ne = [rank, n_out]``, F32. In numpy (row-major, ``ne``
  reversed) these are ``(rank, n_in)`` and ``(n_out, rank)``: PEFT's
  ``lora_A``/``lora_B`` as they are. llama.cpp rejects a pair unless
  ``W.ne[0] == a.ne[0]``, ``W.ne[1] == b.ne[1]`` and ``a.ne[1] == b.ne[0]``.

llama.cpp adds ``scale * alpha / rank * B(A x)`` to ``W x``, where ``scale`` is
the one given to ``llama_set_adapters_lora`` (rank is read from ``b.ne[0]``).
Both A and B are random (a trained adapter starts with B = 0, which would not
change the output), so the adapter visibly changes what the model writes; the
same seed always gives the same bytes.

The base model's names and shapes come from its GGUF header, read here
directly: ``gguf.GGUFReader`` spends about 10 s parsing the 262,144-entry
tokenizer arrays of the default model, this takes a fraction of a second.
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np

DEFAULT_TARGETS: tuple[str, ...] = ("attn_q", "attn_v")

_VT = gguf.GGUFValueType
_SCALAR_SIZES: dict[int, int] = {
    _VT.UINT8: 1, _VT.INT8: 1, _VT.BOOL: 1, _VT.UINT16: 2, _VT.INT16: 2,
    _VT.UINT32: 4, _VT.INT32: 4, _VT.FLOAT32: 4, _VT.UINT64: 8, _VT.INT64: 8, _VT.FLOAT64: 8,
}
_U64 = struct.Struct("<Q")


@dataclass(frozen=True)
class BaseModelInfo:
    """What an adapter needs from its base model: architecture and 2-D weight shapes."""

    architecture: str
    block_count: int | None
    shapes: dict[str, tuple[int, ...]]  # tensor name -> ggml ne (ne[0], the contiguous axis, first)


def write_lora(
    model_path: str,
    out_path: str,
    *,
    rank: int = 8,
    alpha: float = 16.0,
    seed: int = 0,
    targets: tuple[str, ...] = DEFAULT_TARGETS,
    std: float = 0.02,
) -> str:
    """Write a random LoRA adapter for ``model_path``'s ``targets`` in every layer; returns ``out_path``."""
    if rank < 1:
        raise ValueError(f"rank must be at least 1, got {rank}")
    if not std > 0:
        raise ValueError(f"std must be positive, got {std}")
    if not targets:
        raise ValueError("targets must name at least one weight")
    base = read_base_model(model_path)
    names = adapted_weights(base, targets)
    rng = np.random.default_rng(seed)
    writer = gguf.GGUFWriter(out_path, base.architecture)
    writer.add_name(f"synthetic LoRA (rank {rank}, seed {seed})")
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, float(alpha))
    for name in names:
        n_in, n_out = base.shapes[name]
        lora_a = rng.standard_normal((rank, n_in), dtype=np.float32) * np.float32(std)
        lora_b = rng.standard_normal((n_out, rank), dtype=np.float32) * np.float32(std)
        writer.add_tensor(f"{name}.lora_a", lora_a)  # ggml ne = [n_in, rank]
        writer.add_tensor(f"{name}.lora_b", lora_b)  # ggml ne = [rank, n_out]
    write_and_close(writer)
    return out_path


def write_and_close(writer: gguf.GGUFWriter) -> None:
    """Header, metadata and tensors to the writer's file; the file is closed even if a write fails."""
    try:
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    finally:
        writer.close()


def adapted_weights(base: BaseModelInfo, targets: tuple[str, ...]) -> list[str]:
    """``blk.N.<target>.weight`` for every layer N and target, checked to be 2-D weights of ``base``."""
    layers = base.block_count
    if layers is None:  # no <arch>.block_count: count the blk.N prefixes
        layers = len({name.split(".")[1] for name in base.shapes if name.startswith("blk.")})
    names = [f"blk.{n}.{target}.weight" for n in range(layers) for target in targets]
    if not names:
        raise ValueError("the base model has no layers (blk.N.*) to adapt")
    for name in names:
        shape = base.shapes.get(name)
        if shape is None:
            raise ValueError(f"the base model has no tensor {name!r}")
        if len(shape) != 2:
            raise ValueError(f"{name!r} is not a 2-D weight (ggml ne {list(shape)})")
    return names


# --- reading the base model's header ----------------------------------------------


def read_base_model(path: str | Path) -> BaseModelInfo:
    """The architecture, block count and every tensor's ggml shape, from a GGUF v2/v3 header."""
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        magic, version, n_tensors, n_kv = struct.unpack_from("<IIQQ", buf, 0)
        if magic != gguf.GGUF_MAGIC or version not in (2, 3):
            raise ValueError(f"{path} is not a little-endian GGUF v2/v3 file")
        scalars: dict[str, object] = {}
        pos = 24
        for _ in range(n_kv):
            key, pos = _read_string(buf, pos)
            (vtype,) = struct.unpack_from("<I", buf, pos)
            value, pos = _read_value(buf, pos + 4, vtype)
            if value is not None:
                scalars[key.decode()] = value
        shapes: dict[str, tuple[int, ...]] = {}
        for _ in range(n_tensors):
            name, pos = _read_string(buf, pos)
            (n_dims,) = struct.unpack_from("<I", buf, pos)
            shapes[name.decode()] = struct.unpack_from(f"<{n_dims}Q", buf, pos + 4)
            pos += 4 + 8 * n_dims + 12  # the dims, then the type (u32) and offset (u64)
    arch = scalars.get("general.architecture")
    if not isinstance(arch, bytes):
        raise ValueError(f"{path} has no general.architecture")
    blocks = scalars.get(f"{arch.decode()}.block_count")
    return BaseModelInfo(arch.decode(), blocks if isinstance(blocks, int) else None, shapes)


def _read_string(buf: mmap.mmap, pos: int) -> tuple[bytes, int]:
    (n,) = _U64.unpack_from(buf, pos)
    return buf[pos + 8 : pos + 8 + n], pos + 8 + n


def _read_value(buf: mmap.mmap, pos: int, vtype: int) -> tuple[object, int]:
    """One value at ``pos``: (a string or an unsigned integer, else None; the position after it)."""
    if vtype in (_VT.UINT32, _VT.UINT64):
        fmt = "<I" if vtype == _VT.UINT32 else "<Q"
        return struct.unpack_from(fmt, buf, pos)[0], pos + struct.calcsize(fmt)
    if vtype in _SCALAR_SIZES:
        return None, pos + _SCALAR_SIZES[vtype]
    if vtype == _VT.STRING:
        return _read_string(buf, pos)
    if vtype != _VT.ARRAY:
        raise ValueError(f"unknown GGUF value type {vtype} at byte {pos}")
    sub, count = struct.unpack_from("<IQ", buf, pos)
    pos += 12
    if sub in _SCALAR_SIZES:
        return None, pos + count * _SCALAR_SIZES[sub]
    if sub != _VT.STRING:
        raise ValueError(f"unsupported GGUF array of type {sub} at byte {pos}")
    for _ in range(count):
        pos += 8 + _U64.unpack_from(buf, pos)[0]
    return None, pos
