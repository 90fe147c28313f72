"""A tier of row files in one directory: the shm tier (/dev/shm) and the disk tier.

One file per row, named ``<key hex>.kvr``, published crash-safely (see
:mod:`~kvllama.kvcache.tiers.publish`) and re-read and verified before it
becomes visible. On start (:meth:`FileTier.scan`) leftover temporaries are
deleted and every row's header is checked (``meta_crc`` and the file size
catch truncation); valid rows are adopted with their persisted hit counts,
the others are deleted and counted. The full checksum is checked on every
``get``. The in-memory ``_rows`` map is the tier's own accounting; the
cache-wide index lives in :mod:`~kvllama.kvcache.index`.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from pathlib import Path

from kvllama.kvcache.errors import CorruptRowError
from kvllama.kvcache.keys import CacheKey
from kvllama.kvcache.rowformat import STATS_OFFSET, Row, RowMeta, pack_stats, read_row
from kvllama.kvcache.tiers.base import ScanResult, TierFullError
from kvllama.kvcache.tiers.publish import ensure_private_dir, publish, sweep_temps, write_temp

ROW_SUFFIX = ".kvr"


def _pread_exact(fd: int, offset: int, length: int) -> bytes:
    data = os.pread(fd, length, offset)
    if len(data) == length or not data:
        return data
    chunks = [data]  # pragma: no cover - only for reads over ~2 GB
    got = len(data)  # pragma: no cover
    while got < length:  # pragma: no cover
        more = os.pread(fd, length - got, offset + got)
        if not more:
            break
        chunks.append(more)
        got += len(more)
    return b"".join(chunks)  # pragma: no cover


def read_file(path: Path, *, with_blob: bool) -> tuple[RowMeta, bytes | None]:
    """Read and check one row file (FileNotFoundError if absent, CorruptRowError if bad)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        size = os.fstat(fd).st_size
        return read_row(lambda off, n: _pread_exact(fd, off, n), size, with_blob=with_blob)
    finally:
        os.close(fd)


class FileTier:
    def __init__(
        self,
        name: str,
        directory: str | Path,
        budget: int,
        block_size: int,
        *,
        memory_backed: bool,
        durable: bool = True,
    ) -> None:
        self.name = name
        self.budget = budget
        self.memory_backed = memory_backed
        self.directory = Path(directory)
        self._block_size = block_size
        self._durable = durable
        self._rows: dict[CacheKey, int] = {}  # key -> file size
        self._used = 0
        self._lock = threading.Lock()
        ensure_private_dir(self.directory)

    @property
    def used_bytes(self) -> int:
        return self._used

    @property
    def n_rows(self) -> int:
        return len(self._rows)

    def path(self, key: CacheKey) -> Path:
        return self.directory / f"{key.hex()}{ROW_SUFFIX}"

    # --- start ----------------------------------------------------------------

    def scan(self) -> ScanResult:
        """Clean leftovers and adopt every valid row on disk (headers only, no blobs)."""
        result = ScanResult(temps=sweep_temps(self.directory))
        with os.scandir(self.directory) as entries:
            paths = [Path(e.path) for e in entries if e.name.endswith(ROW_SUFFIX)]
        for path in sorted(paths):
            try:
                meta, _ = read_file(path, with_blob=False)
                if path.name != f"{meta.key.hex()}{ROW_SUFFIX}":
                    raise CorruptRowError("file name does not match the key in its header")
            except FileNotFoundError:
                continue
            except (CorruptRowError, OSError):
                result.corrupt += 1
                self._unlink(path)
                continue
            if meta.block_size != self._block_size:
                result.stale += 1
                self._unlink(path)
                continue
            self._account(meta.key, meta.size)
            result.metas.append(meta)
        return result

    # --- protocol -------------------------------------------------------------

    def get(self, key: CacheKey) -> Row | None:
        try:
            meta, blob = read_file(self.path(key), with_blob=True)
        except FileNotFoundError:
            return None
        if meta.key != key:
            raise CorruptRowError("key in header does not match the file name")
        assert blob is not None
        return Row(meta, blob)

    def put(self, row: Row) -> None:
        with self._lock:
            free = self.budget - self._used + self._rows.get(row.key, 0)
        if row.size > free:
            raise TierFullError(self.name, row.size, free)
        tmp = write_temp(self.directory, row.key.hex(), row.parts, durable=self._durable)
        try:
            meta, _ = read_file(tmp, with_blob=True)  # re-read and verify before publishing
            if meta.key != row.key or meta.tokens != row.meta.tokens:
                raise CorruptRowError("temporary row reads back differently")
            publish(tmp, self.path(row.key), durable=self._durable)
        except BaseException:
            self._unlink(tmp)
            raise
        self._account(row.key, row.size)

    def contains(self, key: CacheKey) -> bool:
        return key in self._rows

    def remove(self, key: CacheKey) -> bool:
        with self._lock:
            size = self._rows.pop(key, None)
            if size is not None:
                self._used -= size
        self._unlink(self.path(key))
        return size is not None

    def row_keys(self) -> list[CacheKey]:
        return list(self._rows)

    def metas(self) -> Iterator[RowMeta]:
        for key in self.row_keys():
            meta = self.read_meta(key)
            if meta is not None:
                yield meta

    def read_meta(self, key: CacheKey) -> RowMeta | None:
        try:
            meta, _ = read_file(self.path(key), with_blob=False)
        except (FileNotFoundError, CorruptRowError):
            return None
        return meta

    def touch(self, key: CacheKey, hits: int, last_used: float) -> None:
        """Rewrite the stats block in place (one small pwrite, no fsync: popularity is a hint)."""
        try:
            fd = os.open(self.path(key), os.O_WRONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return
        try:
            os.pwrite(fd, pack_stats(hits, last_used), STATS_OFFSET)
        finally:
            os.close(fd)

    def close(self) -> None:
        """Rows stay on disk for the next start; only the accounting is dropped."""
        with self._lock:
            self._rows.clear()
            self._used = 0

    # --- helpers --------------------------------------------------------------

    def _account(self, key: CacheKey, size: int) -> None:
        with self._lock:
            self._used += size - self._rows.get(key, 0)
            self._rows[key] = size

    @staticmethod
    def _unlink(path: Path) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
