"""Errors of the KV cache.

Only :class:`InvalidCacheSaltError`, :class:`UnsafeCacheDirError` and
:class:`ReadOnlyCacheError` ever reach callers. :class:`CorruptRowError` is raised by the row reader and
always handled inside the cache: a corrupt row is a miss, counted and
deleted, never an exception into the decode loop.
"""

from __future__ import annotations

from kvllama.errors import InvalidRequestError, KvllamaError


class InvalidCacheSaltError(InvalidRequestError):
    """A request's ``cache_salt`` has the wrong type, length or characters."""

    code = "invalid_cache_salt"


class UnsafeCacheDirError(KvllamaError):
    """A file tier's directory is not a real directory owned by this user.

    Rows hold prompt token ids, so a directory someone else created (a
    planted ``/dev/shm/kvllama-<uid>``, a symlink) must never be used.
    """

    code = "unsafe_cache_dir"


class CorruptRowError(KvllamaError):
    """A stored row failed a structural or checksum check (internal)."""

    code = "corrupt_cache_row"


class ReadOnlyCacheError(KvllamaError):
    """A deleting command (clear, verify with repair) on a cache opened read-only."""

    code = "read_only_cache"
