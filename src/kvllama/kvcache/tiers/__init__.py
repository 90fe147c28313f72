"""Storage tiers (RAM, shm files, disk files) and the factory that stacks them."""

from __future__ import annotations

from kvllama.kvcache.config import CacheConfig
from kvllama.kvcache.tiers.base import ScanResult, Tier, TierFullError
from kvllama.kvcache.tiers.files import FileTier
from kvllama.kvcache.tiers.ram import RamTier

__all__ = ["FileTier", "RamTier", "ScanResult", "Tier", "TierFullError", "build_tiers"]


def build_tiers(config: CacheConfig) -> list[Tier]:
    """RAM -> shm -> disk, highest first, leaving out disabled tiers."""
    tiers: list[Tier] = []
    if config.ram_bytes > 0 and not config.read_only:
        tiers.append(RamTier(config.ram_bytes))
    if config.shm_dir is not None and config.shm_bytes > 0:
        tiers.append(
            FileTier("shm", config.shm_dir, config.shm_bytes, config.block_size,
                     memory_backed=True, durable=config.durable, read_only=config.read_only)
        )
    if config.disk_dir is not None and config.disk_bytes > 0:
        tiers.append(
            FileTier("disk", config.disk_dir, config.disk_bytes, config.block_size,
                     memory_backed=False, durable=config.durable, read_only=config.read_only)
        )
    return tiers
