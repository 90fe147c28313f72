"""A tier of row files in one directory: the shm tier (/dev/shm) and the disk tier.

One file per row, named ``<key hex>.kvr``, published crash-safely (see
:mod:`~kvllama.kvcache.tiers.publish`) and re-read and verified before it
becomes visible. On start (:meth:`FileTier.scan`) leftover temporaries are
deleted and every row's header is checked (``meta_crc`` and the file size
catch truncation); valid rows are adopted with their persisted hit counts,
the others are deleted and counted. The full checksum is checked on every
``get``. The in-memory ``_rows`` map is the tier's own accounting; the
cache-wide index lives in :mod:`~kvllama.kvcache.index`.

Anything in the directory that is not a regular file (a directory, FIFO,
socket or symlink named like a row) is skipped by the start-up scan with a
warning and never deleted there: it is not ours. Row files are never opened
in a way that could block (``O_NOFOLLOW | O_NONBLOCK``, then ``fstat``), so
one swapped in under a row's name later is a miss on load (and the name is
cleared as far as ``unlink`` can), never a hang. A *read-only* tier (``kvllama cache list``,
``inspect``, ``verify`` without ``--repair``) deletes nothing at all: it
counts what a writable start would clean up and leaves it in place.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import threading
from pathlib import Path

from kvllama.kvcache.errors import CorruptRowError
from kvllama.kvcache.keys import CacheKey
from kvllama.kvcache.rowformat import STATS_OFFSET, Row, RowMeta, pack_stats, read_row
from kvllama.kvcache.tiers.base import ScanResult, TierFullError
from kvllama.kvcache.tiers.publish import ensure_private_dir, publish, sweep_temps, write_temp

log = logging.getLogger("kvllama.kvcache")

ROW_SUFFIX = ".kvr"
# Opening a FIFO for reading blocks until a writer appears; O_NONBLOCK makes it return at
# once (and is a no-op on regular files). O_NOFOLLOW: a row is never a symlink.
_OPEN_FLAGS = os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK


class NotARowFileError(OSError):
    """Something that is not a regular file sits where a row file should be."""

    def __init__(self, path: Path, mode: int) -> None:
        super().__init__(errno.EINVAL, f"not a regular file ({_kind(mode)})", str(path))


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "directory"), (stat.S_ISFIFO, "fifo"), (stat.S_ISSOCK, "socket"),
                       (stat.S_ISLNK, "symlink"), (stat.S_ISCHR, "character device"),
                       (stat.S_ISBLK, "block device")):
        if test(mode):
            return name
    return "unknown file type"  # pragma: no cover


def open_regular(path: Path, flags: int) -> int:
    """``os.open`` that never blocks on a FIFO and refuses anything but a regular file."""
    fd = os.open(path, flags | _OPEN_FLAGS)
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise NotARowFileError(path, mode)
    except BaseException:
        os.close(fd)
        raise
    return fd


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
    """Read and check one row file.

    FileNotFoundError if absent, CorruptRowError if bad, NotARowFileError for a
    directory/FIFO/socket/symlink, other OSErrors (EACCES, EIO) as they come.
    """
    fd = open_regular(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        return read_row(lambda off, n: _pread_exact(fd, off, n), size, with_blob=with_blob)
    finally:
        os.close(fd)


class FileTier:
    persistent = True  # row files outlive the process (shm until reboot, disk for good)
    stores_packed = True  # put() writes Row.parts with os.writev

    def __init__(
        self,
        name: str,
        directory: str | Path,
        budget: int,
        block_size: int,
        *,
        memory_backed: bool,
        durable: bool = True,
        read_only: bool = False,
    ) -> None:
        self.name = name
        self.budget = budget
        self.memory_backed = memory_backed
        self.directory = Path(directory)
        self._block_size = block_size
        self._durable = durable
        self.read_only = read_only
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
        """Clean leftovers and adopt every valid row on disk (headers only, no blobs).

        Read-only: adopt the valid rows, count the rest, delete nothing.
        """
        result = ScanResult(temps=0 if self.read_only else sweep_temps(self.directory))
        with os.scandir(self.directory) as entries:
            paths = [Path(e.path) for e in entries if e.name.endswith(ROW_SUFFIX)]
        for path in sorted(paths):
            try:
                mode = os.lstat(path).st_mode
                if not stat.S_ISREG(mode):  # never open it: a FIFO would block, a symlink may point anywhere
                    raise NotARowFileError(path, mode)
                meta, _ = read_file(path, with_blob=False)
                if path.name != f"{meta.key.hex()}{ROW_SUFFIX}":
                    raise CorruptRowError("file name does not match the key in its header")
            except FileNotFoundError:
                continue
            except CorruptRowError as exc:
                result.corrupt += 1
                result.corrupt_names.append(path.name)
                if not self.read_only:
                    log.warning("deleting corrupt cache row %s: %s", path, exc)
                    self._unlink(path)
                continue
            except OSError as exc:  # a directory, FIFO, socket or symlink; unreadable; I/O error
                result.skipped += 1
                log.warning("skipping %s in the %s cache tier: %s", path.name, self.name,
                            exc.strerror or exc)
                continue
            if meta.block_size != self._block_size:
                result.stale += 1
                if not self.read_only:
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
        if self.read_only:
            raise OSError(errno.EROFS, f"the {self.name} tier is open read-only")
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
        if self.read_only:
            return False
        with self._lock:
            size = self._rows.pop(key, None)
            if size is not None:
                self._used -= size
        self._unlink(self.path(key))
        return size is not None

    def row_keys(self) -> list[CacheKey]:
        return list(self._rows)

    def read_meta(self, key: CacheKey) -> RowMeta | None:
        try:
            meta, _ = read_file(self.path(key), with_blob=False)
        except (OSError, CorruptRowError):
            return None
        return meta

    def touch(self, key: CacheKey, hits: int, last_used: float) -> None:
        """Rewrite the stats block in place (one small pwrite, no fsync: popularity is a hint)."""
        if self.read_only:
            return
        try:
            fd = open_regular(self.path(key), os.O_WRONLY)
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
        """Delete a row file; what cannot be deleted (a directory in its place) is logged, not raised."""
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning("could not delete %s: %s", path, exc.strerror or exc)
