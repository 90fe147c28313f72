"""Crash-safe publication of files: temp file, fsync, (verify), rename, fsync dir.

A reader only ever opens published names, and a name only ever appears via an
atomic ``os.replace`` of a fully written, fsynced and verified temporary, so
no reader can see a half-written row. Temporaries are dot-files named after
their writer's pid; a new tier deletes those whose writer is gone.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import stat
from collections.abc import Sequence
from pathlib import Path

from kvllama.kvcache.errors import UnsafeCacheDirError

log = logging.getLogger("kvllama.kvcache")

TEMP_SUFFIX = ".tmp"


def ensure_private_dir(path: Path) -> None:
    """Create ``path`` (mode 0700) or check that the existing one is a real dir of ours."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
        raise UnsafeCacheDirError(
            f"cache directory {path} is not a directory owned by uid {os.geteuid()}; "
            "remove it or configure another directory"
        )


def temp_name(stem: str) -> str:
    return f".{stem}.{os.getpid()}.{secrets.token_hex(4)}{TEMP_SUFFIX}"


def _write_all(fd: int, parts: Sequence[bytes]) -> None:
    views = [memoryview(p) for p in parts if len(p)]
    while views:
        written = os.writev(fd, views)
        while views and written >= len(views[0]):
            written -= len(views[0])
            views.pop(0)
        if views and written:
            views[0] = views[0][written:]


def write_temp(directory: Path, stem: str, parts: Sequence[bytes], *, durable: bool) -> Path:
    """Write ``parts`` to a new temporary in ``directory``; on any error leave nothing behind."""
    path = directory / temp_name(stem)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        _write_all(fd, parts)
        if durable:
            os.fsync(fd)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(path)
        raise
    os.close(fd)
    return path


def publish(tmp: Path, final: Path, *, durable: bool) -> None:
    """Atomically make ``tmp`` visible as ``final`` (replacing any older copy)."""
    os.replace(tmp, final)
    if durable:
        try:
            fsync_dir(final.parent)
        except OSError as exc:  # the row is valid and visible; only its durability is in doubt
            log.warning("fsync of %s failed: %s", final.parent, exc)


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _writer_alive(name: str) -> bool:
    """Is the process that owns temporary ``name`` still running (and not us)?"""
    parts = name.split(".")
    try:
        pid = int(parts[-3])
    except (IndexError, ValueError):
        return False
    if pid == os.getpid():
        return False  # a previous cache in this process; nothing of ours is writing yet
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_temps(directory: Path) -> int:
    """Delete leftover temporaries of writers that died between write and publish.

    Only regular files: a directory or FIFO named like a temporary is not one
    of ours, so it is left alone (with a warning) instead of breaking start-up.
    """
    removed = 0
    with os.scandir(directory) as entries:
        for entry in entries:
            if not (entry.name.startswith(".") and entry.name.endswith(TEMP_SUFFIX)):
                continue
            try:
                if not entry.is_file(follow_symlinks=False):
                    log.warning("skipping %s in %s: not a regular file", entry.name, directory)
                    continue
                if _writer_alive(entry.name):
                    continue
                os.unlink(entry.path)
                removed += 1
            except FileNotFoundError:
                continue
            except OSError as exc:
                log.warning("could not delete temporary %s: %s", entry.path, exc.strerror or exc)
    return removed
