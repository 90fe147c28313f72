"""The row format: one self-describing, checksummed record per cached state.

Layout (integers little endian; see docs/cache-format.md)::

    header   72 bytes, immutable: magic b"KVLR", format version, save reason,
             block size, n_tokens, section sizes, created, key, root, meta_crc
    stats    24 bytes at a fixed offset, rewritten in place: hit_count,
             last_used, stats_crc (its own crc32, so bumping popularity never
             touches the main checksum)
    tokens   n_tokens x int32
    inputs   the KeyRoot description (JSON, utf-8)
    blob     the opaque llama.cpp sequence state
    crc32    over header + tokens + inputs + blob (everything before it but stats)

``meta_crc`` covers the header and the tokens and inputs, so a tier can adopt
rows on start by reading headers only; the full checksum is checked on load.
crc32 rather than blake2b: it is 5x faster here (about 5 ms for 14 MB) and a
checksum only has to catch torn writes and bit rot; wrong *tokens* are caught
by comparing them, not by the checksum.
"""

from __future__ import annotations

import enum
import struct
import zlib
from array import array
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import cached_property

from kvllama.kvcache.errors import CorruptRowError
from kvllama.kvcache.keys import DIGEST_SIZE, CacheKey, token_bytes, tokens_from_bytes

MAGIC = b"KVLR"
FORMAT_VERSION = 1
HEADER = struct.Struct(f"<4sHBBIIIQd{DIGEST_SIZE}s{DIGEST_SIZE}sI")
STATS = struct.Struct("<QdII")
TRAILER = struct.Struct("<I")
STATS_OFFSET = HEADER.size
BODY_OFFSET = HEADER.size + STATS.size
# The smallest blob that can be a llama.cpp sequence state: its stream count and one
# stream's cell count (uint32 each). Anything shorter (b"" from a failed
# llama_state_seq_get_data) would restore as an empty sequence under a key that
# claims n tokens, so it is never saved, and a stored one is corrupt.
MIN_BLOB_BYTES = 8


class SaveReason(enum.IntEnum):
    """Why a row was saved (stored as one byte)."""

    COLD = 1  # after a long prompt's prefill
    CONTINUED = 2  # every N tokens of a long generation
    FINISH = 3  # prompt + reply at the end of a request
    EVICT = 4  # a sequence pushed out of its slot
    SHUTDOWN = 5  # engine shutting down
    PREFIX = 6  # a shared prefix, mid-prefill: a system prompt's end, a breakpoint, a common prefix

    @classmethod
    def parse(cls, value: SaveReason | str) -> SaveReason:
        if isinstance(value, SaveReason):
            return value
        try:
            return cls[str(value).upper()]
        except KeyError:
            allowed = ", ".join(r.name.lower() for r in cls)
            raise ValueError(f"unknown save reason {value!r}; expected one of {allowed}") from None

    @property
    def label(self) -> str:
        return self.name.lower()


@dataclass(frozen=True)
class RowMeta:
    """Everything about a row except its state blob."""

    key: CacheKey
    root: bytes
    tokens: array  # array('i'): the exact token ids whose KV the blob holds
    reason: SaveReason
    block_size: int
    created: float
    hits: int
    last_used: float
    inputs: str  # KeyRoot.describe() JSON
    blob_len: int

    @property
    def n_tokens(self) -> int:
        return len(self.tokens)

    @property
    def size(self) -> int:
        return packed_size(len(self.tokens), len(self.inputs.encode()), self.blob_len)


@dataclass(frozen=True)
class Row:
    meta: RowMeta
    blob: bytes

    @property
    def key(self) -> CacheKey:
        return self.meta.key

    @property
    def size(self) -> int:
        return self.meta.size

    def with_stats(self, hits: int, last_used: float) -> Row:
        return Row(replace(self.meta, hits=hits, last_used=last_used), self.blob)

    @property
    def is_packed(self) -> bool:
        """True once :attr:`parts` has been computed (the stack times packing separately)."""
        return "parts" in self.__dict__

    @cached_property
    def parts(self) -> tuple[bytes, ...]:
        """The packed row as a few buffers (for ``os.writev``; no 14 MB concatenation)."""
        m = self.meta
        toks, inputs = token_bytes(m.tokens), m.inputs.encode()
        head = _pack_header(m, len(inputs), 0)
        meta_crc = zlib.crc32(inputs, zlib.crc32(toks, zlib.crc32(head[:-4])))
        head = _pack_header(m, len(inputs), meta_crc)
        crc = zlib.crc32(self.blob, zlib.crc32(inputs, zlib.crc32(toks, zlib.crc32(head))))
        return (head, pack_stats(m.hits, m.last_used), toks, inputs, self.blob, TRAILER.pack(crc))


def _pack_header(m: RowMeta, inputs_len: int, meta_crc: int) -> bytes:
    return HEADER.pack(
        MAGIC, FORMAT_VERSION, int(m.reason), 0, m.block_size, len(m.tokens), inputs_len,
        m.blob_len, m.created, m.key, m.root, meta_crc,
    )


def packed_size(n_tokens: int, inputs_len: int, blob_len: int) -> int:
    return BODY_OFFSET + 4 * n_tokens + inputs_len + blob_len + TRAILER.size


def pack(row: Row) -> bytes:
    return b"".join(row.parts)


def pack_stats(hits: int, last_used: float) -> bytes:
    head = struct.pack("<Qd", hits, last_used)
    return STATS.pack(hits, last_used, zlib.crc32(head), 0)


def parse_stats(data: bytes) -> tuple[int, float] | None:
    """(hits, last_used), or None if the stats block is torn (the row itself stays valid)."""
    hits, last_used, crc, _ = STATS.unpack(data)
    return (hits, last_used) if zlib.crc32(data[:16]) == crc else None


Reader = Callable[[int, int], bytes]  # (offset, length) -> exactly that many bytes, or fewer at EOF


def read_row(read: Reader, size: int, *, with_blob: bool) -> tuple[RowMeta, bytes | None]:
    """Parse and check a packed row; raise CorruptRowError on any mismatch.

    Without ``with_blob`` only the header, tokens and inputs are read and
    checked (``meta_crc`` and the total size); with it the blob is read and
    the full checksum verified too.
    """
    fixed = read(0, BODY_OFFSET)
    if len(fixed) < BODY_OFFSET:
        raise CorruptRowError(f"truncated header ({len(fixed)} bytes)")
    magic, version, reason, _flags, block, n_tokens, inputs_len, blob_len, created, key, root, meta_crc = (
        HEADER.unpack(fixed[: HEADER.size])
    )
    if magic != MAGIC or version != FORMAT_VERSION:
        raise CorruptRowError(f"bad magic or version ({magic!r}, {version})")
    if blob_len < MIN_BLOB_BYTES:
        raise CorruptRowError(f"state blob of {blob_len} bytes is too short to be a state")
    expected = packed_size(n_tokens, inputs_len, blob_len)
    if size != expected:
        raise CorruptRowError(f"size is {size} bytes, header says {expected}")
    body = read(BODY_OFFSET, 4 * n_tokens + inputs_len)
    head = fixed[:HEADER.size]
    if zlib.crc32(body, zlib.crc32(head[:-4])) != meta_crc:
        raise CorruptRowError("header checksum mismatch")
    try:
        inputs = bytes(body[4 * n_tokens :]).decode()
        why = SaveReason(reason)
    except ValueError as exc:
        raise CorruptRowError(str(exc)) from None
    hits, last_used = parse_stats(fixed[STATS_OFFSET:BODY_OFFSET]) or (0, created)
    tokens = tokens_from_bytes(body[: 4 * n_tokens])
    meta = RowMeta(CacheKey(key), root, tokens, why, block, created, hits, last_used, inputs, blob_len)
    if not with_blob:
        return meta, None
    blob_at = BODY_OFFSET + len(body)
    blob = read(blob_at, blob_len)
    (stored,) = TRAILER.unpack(bytes(read(blob_at + blob_len, TRAILER.size)).ljust(TRAILER.size, b"\0"))
    if len(blob) != blob_len or zlib.crc32(blob, zlib.crc32(body, zlib.crc32(head))) != stored:
        raise CorruptRowError("checksum mismatch")
    return meta, blob


def unpack(data: bytes) -> Row:
    """Parse and fully verify a row held in memory."""
    view = memoryview(data)
    meta, blob = read_row(lambda off, n: bytes(view[off : off + n]), len(data), with_blob=True)
    assert blob is not None
    return Row(meta, blob)
