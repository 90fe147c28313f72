"""Key roots for :class:`~kvllama.kvcache.cache.KvCache`: a bounded LRU of root descriptions.

Kept apart from the facade because the bound is its own concern: one root
per model and cache_salt means a client sending random salts could grow the
map forever, so roots live in an LRU of ``config.max_roots`` that lets go of
roots without live rows first. Forgetting a root loses nothing (a stored row
keeps its own copy of the description).
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict

from kvllama.kvcache.config import CacheConfig
from kvllama.kvcache.index import Index
from kvllama.kvcache.keys import KeyRoot

RootLike = bytes | KeyRoot
# How many of the least recently used roots register_root looks through for one without rows.
_ROOT_SCAN = 16


class RootRegistry:
    """The root half of KvCache: register roots, resolve a root to its digest, describe it."""

    # Set by KvCache.__init__.
    config: CacheConfig
    _mu: threading.Lock
    _index: Index
    # root digest -> KeyRoot description, for new rows; an LRU of at most config.max_roots.
    _roots: OrderedDict[bytes, str]

    def register_root(self, root: KeyRoot) -> bytes:
        """The root bytes of ``root``; rows saved under them record its description.

        Roots are kept in an LRU of ``config.max_roots`` (one root per model
        and cache_salt, so a client sending random salts would otherwise grow
        this map forever). Forgetting a root loses nothing: a stored row keeps
        its own copy of the description, and every save and lookup that passes
        a KeyRoot registers it again. Roots without live rows go first.
        """
        digest = root.digest
        with self._mu:
            if digest in self._roots:
                self._roots.move_to_end(digest)
                return digest
        description = root.describe()
        with self._mu:
            self._roots[digest] = description
            self._roots.move_to_end(digest)
            while len(self._roots) > self.config.max_roots:
                self._roots.pop(self._root_to_drop(keep=digest))
        return digest

    def _root_to_drop(self, keep: bytes) -> bytes:
        """The LRU root with no live rows among the oldest few, else the oldest (caller holds _mu)."""
        oldest = next(iter(self._roots))
        for i, digest in enumerate(self._roots):
            if digest == keep or i >= _ROOT_SCAN:
                break
            if not self._index.lengths(digest):
                return digest
        return oldest

    def known_roots(self) -> int:
        """How many root descriptions are remembered (at most ``config.max_roots``)."""
        with self._mu:
            return len(self._roots)

    def _description(self, root: RootLike, digest: bytes) -> str:
        """What a new row records about its root (a KeyRoot describes itself; the LRU may have let go)."""
        if isinstance(root, KeyRoot):
            return root.describe()
        with self._mu:
            known = self._roots.get(digest)
        return known or json.dumps({"root": digest.hex()})

    def _resolve(self, root: RootLike) -> bytes:
        return self.register_root(root) if isinstance(root, KeyRoot) else bytes(root)
