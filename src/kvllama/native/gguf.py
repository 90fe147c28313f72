"""A small, read-only GGUF reader: metadata and a bounds check, without llama.cpp.

Why it exists: llama.cpp reports a bad file as a NULL model and a log line, so
a truncated or foreign file would surface as an opaque failure (and some
corruptions trip asserts that abort the process). Reading the header here
first turns every such file into a :class:`MalformedModelError` that says
what is wrong, and gives ``kvllama models`` a model's metadata without loading
its weights.
"""

from __future__ import annotations

import mmap
import os
import struct
from dataclasses import dataclass
from typing import Any

from kvllama.errors import MalformedModelError, ModelFileNotFoundError

_MAGIC = b"GGUF"
_SCALARS = {
    0: "<B",  # uint8
    1: "<b",  # int8
    2: "<H",  # uint16
    3: "<h",  # int16
    4: "<I",  # uint32
    5: "<i",  # int32
    6: "<f",  # float32
    7: "<?",  # bool
    10: "<Q",  # uint64
    11: "<q",  # int64
    12: "<d",  # float64
}
_STRING, _ARRAY = 8, 9
# Arrays longer than this (vocabularies) are skipped, not materialised.
_KEEP_ARRAY_MAX = 64
DEFAULT_ALIGNMENT = 32


@dataclass(frozen=True)
class GgufInfo:
    path: str
    version: int
    size_bytes: int
    metadata: dict[str, Any]
    n_tensors: int
    # ggml type ids of the tensors (which CPU kernels the model's matmuls can take).
    tensor_types: frozenset[int] = frozenset()

    def get(self, key: str, default: Any = None) -> Any:
        return self.metadata.get(key, default)

    @property
    def architecture(self) -> str:
        return str(self.metadata.get("general.architecture", "unknown"))

    def arch_value(self, suffix: str, default: Any = None) -> Any:
        return self.metadata.get(f"{self.architecture}.{suffix}", default)


def read_gguf(path: str) -> GgufInfo:
    """Parse the header, metadata and tensor table; check every tensor lies in the file."""
    if not os.path.isfile(path):
        raise ModelFileNotFoundError(path)
    size = os.path.getsize(path)
    if size < 24:
        raise MalformedModelError(f"{path}: {size} bytes is too small to be a GGUF file")
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
        if data[:4] != _MAGIC:
            raise MalformedModelError(f"{path}: not a GGUF file (magic {bytes(data[:4])!r})")
        try:
            return _parse(path, data, size)
        except (struct.error, IndexError, UnicodeDecodeError, OverflowError) as exc:
            raise MalformedModelError(f"{path}: truncated or corrupt GGUF header ({exc})") from None


class _Cursor:
    def __init__(self, data: mmap.mmap) -> None:
        self.data = data
        self.at = 0

    def unpack(self, fmt: str) -> Any:
        value = struct.unpack_from(fmt, self.data, self.at)[0]
        self.at += struct.calcsize(fmt)
        return value

    def string(self) -> str:
        n = self.unpack("<Q")
        if self.at + n > len(self.data):
            raise IndexError("string runs past the end of the file")
        raw = self.data[self.at : self.at + n]
        self.at += n
        return raw.decode("utf-8")

    def skip_string(self) -> None:
        n = self.unpack("<Q")
        self.at += n
        if self.at > len(self.data):
            raise IndexError("string runs past the end of the file")

    def value(self, vtype: int) -> Any:
        if vtype in _SCALARS:
            return self.unpack(_SCALARS[vtype])
        if vtype == _STRING:
            return self.string()
        if vtype == _ARRAY:
            item_type = self.unpack("<I")
            count = self.unpack("<Q")
            if count > _KEEP_ARRAY_MAX:
                self._skip_array(item_type, count)
                return f"<array of {count}>"
            return [self.value(item_type) for _ in range(count)]
        raise IndexError(f"unknown metadata value type {vtype}")

    def _skip_array(self, item_type: int, count: int) -> None:
        if item_type in _SCALARS:
            self.at += struct.calcsize(_SCALARS[item_type]) * count
        elif item_type == _STRING:
            for _ in range(count):
                self.skip_string()
        else:
            for _ in range(count):
                self.value(item_type)
        if self.at > len(self.data):
            raise IndexError("array runs past the end of the file")


def _parse(path: str, data: mmap.mmap, size: int) -> GgufInfo:
    cur = _Cursor(data)
    cur.at = 4
    version = cur.unpack("<I")
    if version not in (2, 3):
        raise MalformedModelError(f"{path}: unsupported GGUF version {version}")
    n_tensors = cur.unpack("<Q")
    n_kv = cur.unpack("<Q")
    metadata: dict[str, Any] = {}
    for _ in range(n_kv):
        key = cur.string()
        metadata[key] = cur.value(cur.unpack("<I"))
    tensor_ends: list[tuple[int, int]] = []
    types: set[int] = set()
    for _ in range(n_tensors):
        cur.skip_string()
        n_dims = cur.unpack("<I")
        dims = [cur.unpack("<Q") for _ in range(n_dims)]
        types.add(cur.unpack("<I"))  # ggml type
        offset = cur.unpack("<Q")
        n_elements = 1
        for d in dims:
            n_elements *= d
        tensor_ends.append((offset, n_elements))
    alignment = int(metadata.get("general.alignment", DEFAULT_ALIGNMENT))
    data_start = (cur.at + alignment - 1) // alignment * alignment
    if tensor_ends:
        last_offset = max(offset for offset, _ in tensor_ends)
        if data_start + last_offset >= size:
            raise MalformedModelError(
                f"{path}: truncated: tensor data needs more than {data_start + last_offset} "
                f"bytes but the file has {size}"
            )
    return GgufInfo(path=path, version=version, size_bytes=size, metadata=metadata,
                    n_tensors=n_tensors, tensor_types=frozenset(types))
