"""Cache keys: a root per KV layout and tenant, chained over aligned token blocks.

A row's key must change whenever anything that changes the llama.cpp state
changes, so the root (:class:`KeyRoot`) folds in the model, KV layout (types,
stream count, SWA cache), state format version, LoRA adapters, the options
that change the computed numbers (``numerics``) and the tenant's
``cache_salt``. Tokens are then chained block by block::

    h0      = H(root)
    h(i+1)  = H(h(i) || tokens of block i)            (int32 little endian)
    key(n)  = H(h(n // block) || tokens[(n // block) * block : n] || n)

so the keys of *every* prefix of a prompt share one pass over it
(:class:`KeyChain`): probing the lengths the index holds costs one block hash
per block plus one short tail hash per probe, not one full hash per probe.
Keys only select candidates; a hit is always confirmed by comparing token
ids, so a collision is a miss, never wrong output.
"""

from __future__ import annotations

import json
import re
import sys
from array import array
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from hashlib import blake2b
from typing import NewType

from kvllama.kvcache.errors import InvalidCacheSaltError

CacheKey = NewType("CacheKey", bytes)

DIGEST_SIZE = 16
# blake2b's "person" parameter keeps the three hash uses in separate domains,
# so a root can never equal a chain value or a key by construction.
_ROOT = b"kvllama.root"
_CHAIN = b"kvllama.chain"
_KEY = b"kvllama.key"
# 2: n_seq_max always hashed, swa_full and numerics added. Bumping it makes
# every row saved under an older root unreachable (a miss), never misread.
_ROOT_FORMAT = 2

_SALT_RE = re.compile(r"[A-Za-z0-9._:-]+")
_SALT_MAX = 256

if array("i").itemsize != 4:  # pragma: no cover - every platform llama.cpp runs on
    raise ImportError("kvllama.kvcache needs a 4-byte C int for token ids")


def validate_cache_salt(salt: object) -> str | None:
    """Return ``salt`` if it is a valid cache salt (or None); raise InvalidCacheSaltError otherwise."""
    if salt is None:
        return None
    if not isinstance(salt, str):
        raise InvalidCacheSaltError(f"cache_salt must be a string, got {type(salt).__name__}")
    if not 1 <= len(salt) <= _SALT_MAX:
        raise InvalidCacheSaltError(
            f"cache_salt must be 1 to {_SALT_MAX} characters long, got {len(salt)}"
        )
    if _SALT_RE.fullmatch(salt) is None:
        bad = sorted({c for c in salt if _SALT_RE.fullmatch(c) is None})[:5]
        raise InvalidCacheSaltError(
            f"cache_salt may only contain letters, digits and . _ : -; found {''.join(bad)!r}"
        )
    return salt


def token_array(tokens: Sequence[int]) -> array:
    """Token ids as a compact ``array('i')`` (no copy if it already is one)."""
    if isinstance(tokens, array) and tokens.typecode == "i":
        return tokens
    return array("i", tokens)


def token_bytes(tokens: array) -> bytes:
    """Token ids as int32 little endian, whatever the host byte order."""
    if sys.byteorder == "little":
        return tokens.tobytes()
    swapped = array("i", tokens)  # pragma: no cover - big-endian hosts
    swapped.byteswap()  # pragma: no cover
    return swapped.tobytes()  # pragma: no cover


def tokens_from_bytes(data: bytes | memoryview) -> array:
    """Inverse of :func:`token_bytes`."""
    tokens = array("i")
    tokens.frombytes(data)
    if sys.byteorder != "little":  # pragma: no cover - big-endian hosts
        tokens.byteswap()
    return tokens


def _numeric(name: object, value: object) -> NumericValue:
    """A JSON scalar (sequences become their canonical string), so the digest is well defined."""
    if value is None or isinstance(value, str | int | float | bool):
        return value
    if isinstance(value, tuple | list):
        return json.dumps(list(value), separators=(",", ":"))
    raise TypeError(f"KeyRoot.numerics[{name!r}] must be a JSON scalar, got {type(value).__name__}")


def _digest(data: bytes, person: bytes) -> bytes:
    return blake2b(data, digest_size=DIGEST_SIZE, person=person).digest()


NumericValue = str | int | float | bool | None


@dataclass(frozen=True, kw_only=True)
class KeyRoot:
    """Everything besides the token ids that determines a row's state bytes or numbers.

    Every field is hashed into :attr:`digest` unconditionally: a field that is
    only sometimes hashed is how a restorable-looking row from another
    configuration gets served (llama.cpp then refuses it, or worse, accepts it).
    """

    model_fingerprint: str  # identifies the GGUF weights (e.g. a content hash)
    type_k: str  # KV cache element types: a q8_0 cache restores differently from f16
    type_v: str
    flash_attn: bool | str  # the option as given ("off", "on", "auto"): each computes differently
    kv_unified: bool
    # The blob of a non-unified cache holds one cell list per stream (n_stream =
    # n_seq_max) and llama.cpp refuses a blob whose stream count differs.
    n_seq_max: int
    state_version: str  # llama.cpp / llama-cpp-python state blob format
    swa_full: bool = False  # a full-size SWA cache saves every cell, not just the window
    adapters: tuple[tuple[str, float], ...] = ()  # (name, scale), sorted on construction
    # Options that change the computed numbers but not the blob layout (batch
    # shapes, kernels, devices, the llama.cpp build and CPU features): a row
    # computed under other numbers would not restore bit-identically to a cold
    # run here. (name, value) pairs, sorted on construction; a Mapping is accepted.
    numerics: tuple[tuple[str, NumericValue], ...] = ()
    cache_salt: str | None = None  # tenant isolation: different salts never share rows

    def __post_init__(self) -> None:
        validate_cache_salt(self.cache_salt)
        adapters = tuple(sorted((str(name), float(scale)) for name, scale in self.adapters))
        object.__setattr__(self, "adapters", adapters)
        pairs = self.numerics.items() if isinstance(self.numerics, Mapping) else self.numerics
        numerics = tuple(sorted((str(name), _numeric(name, value)) for name, value in pairs))
        if len({name for name, _ in numerics}) != len(numerics):
            raise ValueError("KeyRoot.numerics names must be unique")
        object.__setattr__(self, "numerics", numerics)

    def _fields(self, salt: str | None) -> dict[str, object]:
        return {
            "format": _ROOT_FORMAT,
            "model_fingerprint": self.model_fingerprint,
            "type_k": self.type_k,
            "type_v": self.type_v,
            "flash_attn": self.flash_attn,
            "kv_unified": bool(self.kv_unified),
            "n_seq_max": int(self.n_seq_max),
            "swa_full": bool(self.swa_full),
            "state_version": self.state_version,
            "adapters": [[name, scale] for name, scale in self.adapters],
            "numerics": dict(self.numerics),
            "cache_salt": salt,
        }

    @cached_property
    def digest(self) -> bytes:
        """The root bytes every key of this layout and tenant is chained from."""
        canonical = json.dumps(self._fields(self.cache_salt), sort_keys=True, separators=(",", ":"))
        return _digest(canonical.encode(), _ROOT)

    def describe(self) -> str:
        """JSON stored in each row so ``kvllama cache inspect`` can show what it belongs to.

        The salt itself is replaced by a short fingerprint: row files must not
        hand out a tenant's salt to whoever can read the cache directory.
        """
        salt = None
        if self.cache_salt is not None:
            salt = "blake2b:" + blake2b(self.cache_salt.encode(), digest_size=8).hexdigest()
        return json.dumps(self._fields(salt), sort_keys=True, separators=(",", ":"))


class KeyChain:
    """The keys of every prefix of one token list, computed in a single pass over it."""

    def __init__(self, root: bytes, tokens: Sequence[int], block_size: int) -> None:
        if block_size <= 0:
            raise ValueError("block_size must be positive")
        self.tokens = token_array(tokens)
        self._data = memoryview(token_bytes(self.tokens))
        self._block = block_size
        self._chain = [_digest(root, _CHAIN)]

    def _extend(self, n_blocks: int) -> None:
        step = self._block * 4
        chain, data = self._chain, self._data
        for i in range(len(chain) - 1, n_blocks):
            h = blake2b(chain[i], digest_size=DIGEST_SIZE, person=_CHAIN)
            h.update(data[i * step : (i + 1) * step])
            chain.append(h.digest())

    def block_values(self, n_blocks: int) -> list[bytes]:
        """The chain values after 1..``n_blocks`` whole blocks: the identity of each block-aligned prefix.

        Two token lists under one root share the value after block i exactly when
        their first i blocks are equal (up to a hash collision, which callers
        rule out by comparing tokens), so the index can find rows that merely
        *start* with a prompt's prefix.
        """
        n_blocks = min(n_blocks, len(self.tokens) // self._block)
        self._extend(n_blocks)
        return self._chain[1 : n_blocks + 1]

    def key(self, n: int) -> CacheKey:
        """The key of ``tokens[:n]``."""
        if not 0 <= n <= len(self.tokens):
            raise ValueError(f"prefix length {n} outside 0..{len(self.tokens)}")
        full = n // self._block
        self._extend(full)
        h = blake2b(self._chain[full], digest_size=DIGEST_SIZE, person=_KEY)
        h.update(self._data[full * self._block * 4 : n * 4])
        h.update(n.to_bytes(8, "little"))
        return CacheKey(h.digest())

    def keys(self, lengths: Iterable[int], max_len: int | None = None) -> Iterator[tuple[int, CacheKey]]:
        """``(n, key of tokens[:n])`` for each wanted length that fits, longest first."""
        limit = len(self.tokens) if max_len is None else min(max_len, len(self.tokens))
        for n in sorted({n for n in lengths if 0 < n <= limit}, reverse=True):
            yield n, self.key(n)


def key_of(root: bytes, tokens: Sequence[int], block_size: int) -> CacheKey:
    """The key of the whole token list."""
    chain = KeyChain(root, tokens, block_size)
    return chain.key(len(chain.tokens))


def prefix_keys(
    root: bytes, tokens: Sequence[int], lengths: Iterable[int], block_size: int
) -> list[tuple[int, CacheKey]]:
    """Keys of ``tokens[:n]`` for every ``n`` in ``lengths`` (longest first), in one pass."""
    return list(KeyChain(root, tokens, block_size).keys(lengths))
