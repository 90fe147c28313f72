"""kvllama's token-exact tiered KV cache (storage layer; no llama.cpp calls).

Rows are opaque llama.cpp sequence-state blobs keyed by (root, token ids).
See :mod:`kvllama.kvcache.cache` for the facade and docs/cache-format.md for
the on-disk format.
"""

from kvllama.kvcache.cache import KvCache
from kvllama.kvcache.config import CacheConfig, default_disk_dir, default_shm_dir
from kvllama.kvcache.errors import InvalidCacheSaltError, UnsafeCacheDirError
from kvllama.kvcache.keys import CacheKey, KeyChain, KeyRoot, key_of, prefix_keys, validate_cache_salt
from kvllama.kvcache.records import CacheHit, RowInfo
from kvllama.kvcache.rowformat import SaveReason

__all__ = [
    "CacheConfig",
    "CacheHit",
    "CacheKey",
    "InvalidCacheSaltError",
    "KeyChain",
    "KeyRoot",
    "KvCache",
    "RowInfo",
    "SaveReason",
    "UnsafeCacheDirError",
    "default_disk_dir",
    "default_shm_dir",
    "key_of",
    "prefix_keys",
    "validate_cache_salt",
]
