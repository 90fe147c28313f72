"""Prompts seen recently, by block-aligned prefix: where does a new prompt start like an old one?

Clients that send raw prompts (``/v1/completions``, token lists) name no
system prompt, yet many of their prompts start alike. When a new prompt
shares a long block-aligned prefix with one seen recently, the prefill
saves a row at the end of that shared part (decoding/warm.py), so the next
prompt that starts the same way restores it instead of prefilling it
again, whatever follows. The index holds only chain values (16 bytes per
64-token block, see :meth:`~kvllama.kvcache.keys.KeyChain.block_values`), in
one LRU bounded by ``max_blocks``; it is per key root, so tenants (cache
salts) never see each other's prompts. Loop thread only.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

from kvllama.kvcache.keys import KeyChain

DEFAULT_MAX_BLOCKS = 65_536  # ~1 MiB of digests: 4M tokens of recent prompts


class RecentPrefixes:
    def __init__(self, block_size: int, max_blocks: int = DEFAULT_MAX_BLOCKS) -> None:
        self._block = block_size
        self._max = max_blocks
        self._seen: OrderedDict[bytes, None] = OrderedDict()

    def __len__(self) -> int:
        return len(self._seen)

    def observe(self, root: bytes, prompt: Sequence[int]) -> int:
        """Record ``prompt``; return how many of its leading tokens (whole blocks) an earlier one shared."""
        values = KeyChain(root, prompt, self._block).block_values(len(prompt) // self._block)
        shared = 0
        for i, value in enumerate(values):
            if value not in self._seen:
                break
            shared = (i + 1) * self._block
        for value in values:
            self._seen[value] = None
            self._seen.move_to_end(value)
        while len(self._seen) > self._max:
            self._seen.popitem(last=False)
        return shared
