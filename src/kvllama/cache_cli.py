"""``kvllama cache list|inspect|verify|clear`` and the cache flags every engine command shares.

The cache commands look after the *file* tiers (shm and disk) without
loading a model: the RAM tier lives inside a running kvllama process, so
there is nothing to see of it from outside. ``list``, ``inspect`` and
``verify`` open the directories read-only (``CacheConfig.read_only``): they
delete nothing, not even corrupt rows or leftover temporaries, and evict
nothing; a running engine may be using the files. Only ``verify --repair``
and ``clear`` delete. A directory that does not exist is an empty tier here:
listing a cache must not create one.

Like the engine, these commands should not run while another process writes
the same directory: each keeps its own index (see docs/cache-format.md).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any, TextIO

from tqdm import tqdm

from kvllama.kvcache import CacheConfig, KvCache, RowInfo, default_disk_dir, default_shm_dir
from kvllama.kvcache.errors import CorruptRowError
from kvllama.kvcache.tiers import FileTier
from kvllama.kvcache.tiers.files import ROW_SUFFIX

TIERS = ("ram", "shm", "disk")
# Budgets for the admin commands: large enough that opening a cache never evicts a row.
UNLIMITED = 1 << 60
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_bytes(text: str) -> int:
    """``"512M"``, ``"1.5G"``, ``"2GiB"``, ``"1048576"`` -> bytes (K/M/G/T are powers of 1024)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*", text.lower())
    if m is None:
        raise argparse.ArgumentTypeError(f"not a byte count: {text!r} (e.g. 1048576, 512M, 2G)")
    return int(float(m.group(1)) * _UNITS[m.group(2)])


# --- flags shared by serve / complete / models / bench --------------------------


def add_cache_flags(p: argparse.ArgumentParser, *, engine: bool = True) -> None:
    """Where the cache tiers live; ``engine=False`` leaves out what only a running engine uses."""
    g = p.add_argument_group("KV cache")
    g.add_argument("--shm-dir", default=None,
                   help="shm tier directory (default: $KVLLAMA_SHM_DIR, else /dev/shm/kvllama-<uid>)")
    g.add_argument("--disk-dir", default=None, help="disk tier directory (default: no disk tier)")
    g.add_argument("--disk", action="store_true",
                   help=f"use the default disk tier directory ({default_disk_dir()})")
    if engine:
        g.add_argument("--ram-bytes", type=parse_bytes, default=None, help="RAM tier budget (default 1G)")
        g.add_argument("--shm-bytes", type=parse_bytes, default=None,
                       help="shm tier budget (default 1G; 0 disables the tier)")
        g.add_argument("--disk-bytes", type=parse_bytes, default=None, help="disk tier budget (default 8G)")
        g.add_argument("--no-cache", action="store_true", help="run without the KV cache")


def _dirs(args: argparse.Namespace) -> tuple[str | None, str | None]:
    shm = getattr(args, "shm_dir", None) or default_shm_dir()
    disk = getattr(args, "disk_dir", None) or (default_disk_dir() if getattr(args, "disk", False) else None)
    return shm, disk


def engine_cache_config(args: argparse.Namespace) -> CacheConfig | None:
    """The engine's CacheConfig from the flags (None with --no-cache); defaults are CacheConfig's."""
    if getattr(args, "no_cache", False):
        return None
    shm, disk = _dirs(args)
    budgets = {name: getattr(args, name) for name in ("ram_bytes", "shm_bytes", "disk_bytes")
               if getattr(args, name, None) is not None}
    return CacheConfig(shm_dir=shm, disk_dir=disk, **budgets)


# --- the `cache` command ---------------------------------------------------------


def register(sub: Any) -> None:
    """Add ``kvllama cache ...`` to the top-level subparsers."""
    cache = sub.add_parser("cache", help="list, inspect, verify or clear the shm and disk cache tiers")
    cache_sub = cache.add_subparsers(dest="cache_command", required=True)

    ls = cache_sub.add_parser("list", help="one line per cached row")
    _tier_flag(ls)
    ls.add_argument("--json", action="store_true", help="print JSON")
    ls.set_defaults(func=cmd_list)

    ins = cache_sub.add_parser("inspect", help="one row and the key inputs it was saved under")
    ins.add_argument("key", help="the row's key, or a unique prefix of it (as `list` shows)")
    ins.add_argument("--json", action="store_true", help="print JSON")
    ins.set_defaults(func=cmd_inspect)

    ver = cache_sub.add_parser("verify", help="check every row's checksum (--repair: delete corrupt rows)")
    _tier_flag(ver)
    ver.add_argument("--json", action="store_true", help="print JSON")
    ver.add_argument("--repair", action="store_true",
                     help="delete corrupt and stale rows and dead writers' temporaries "
                          "(default: only report)")
    ver.set_defaults(func=cmd_verify)

    clr = cache_sub.add_parser("clear", help="delete every row (of one tier with --tier)")
    _tier_flag(clr)
    clr.set_defaults(func=cmd_clear)

    for p in (ls, ins, ver, clr):
        add_cache_flags(p, engine=False)


def _tier_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tier", choices=TIERS, default=None, help="only this tier (default: all)")


def _file_tiers(args: argparse.Namespace) -> dict[str, Path]:
    """The existing tier directories the flags name, filtered by --tier."""
    shm, disk = _dirs(args)
    wanted = getattr(args, "tier", None)
    found = {}
    for name, directory in (("shm", shm), ("disk", disk)):
        if directory is not None and wanted in (None, name) and Path(directory).is_dir():
            found[name] = Path(directory)
    if wanted == "ram":
        print("kvllama: the ram tier lives inside a running kvllama process; "
              "the cache commands see only the shm and disk tiers", file=sys.stderr)
    return found


@contextmanager
def open_cache(tiers: dict[str, Path], *, writable: bool = False) -> Iterator[KvCache]:
    """A KvCache on the given file tiers only: no RAM tier, unlimited budgets, nothing evicted.

    Read-only unless ``writable``: opening a cache to look at it must not
    delete what its start-up scan would clean up.
    """
    config = CacheConfig(
        ram_bytes=0,
        shm_dir=tiers.get("shm"), shm_bytes=UNLIMITED,
        disk_dir=tiers.get("disk"), disk_bytes=UNLIMITED,
        writer_threads=1, persist_ram_on_close=False, read_only=not writable,
    )
    cache = KvCache(config)
    try:
        yield cache
    finally:
        cache.close()


def cmd_list(args: argparse.Namespace) -> int:
    tiers = _file_tiers(args)
    with open_cache(tiers) as cache:
        rows = cache.rows()
    if args.json:
        print(json.dumps([asdict(r) for r in rows], indent=2))
        return 0
    print(format_rows(rows))
    total = sum(r.size for r in rows)
    where = ", ".join(f"{name} {path}" for name, path in tiers.items()) or "no cache directory found"
    print(f"{len(rows)} rows, {human_bytes(total)} ({where})")
    return 0


def format_rows(rows: list[RowInfo]) -> str:
    head = f"{'tier':<5} {'key':<16} {'tokens':>7} {'size':>9} {'hits':>5} {'age':>6} {'idle':>6}  reason"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r.tier:<5} {r.key[:16]:<16} {r.n_tokens:>7} {human_bytes(r.size):>9} {r.hits:>5} "
                     f"{human_age(r.age):>6} {human_age(r.idle):>6}  {r.reason}")
    return "\n".join(lines)


def cmd_inspect(args: argparse.Namespace) -> int:
    with open_cache(_file_tiers(args)) as cache:
        wanted = args.key.lower()
        matches = [r.key for r in cache.rows() if r.key.startswith(wanted)]
        if len(matches) != 1:
            what = "no row has" if not matches else f"{len(matches)} rows have"
            print(f"kvllama: error: {what} a key starting with {args.key!r}", file=sys.stderr)
            return 1
        info = cache.inspect(matches[0])
    if info is None:  # deleted between the two calls (another process)
        print(f"kvllama: error: row {matches[0]} vanished", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(asdict(info), indent=2))
        return 0
    fields = asdict(info)
    inputs = fields.pop("key_inputs")
    fields["size"] = f"{info.size} ({human_bytes(info.size)})"
    fields["age"], fields["idle"] = human_age(info.age), human_age(info.idle)
    fields["created"] = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info.created))
    fields["last_used"] = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info.last_used))
    for name, value in fields.items():
        print(f"{name:<10} {value}")
    print("key inputs (what the key covers besides the token ids):")
    for name, value in (inputs or {}).items():
        print(f"  {name:<18} {json.dumps(value) if not isinstance(value, str) else value}")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    repair = getattr(args, "repair", False)
    report = verify_tiers(_file_tiers(args), progress=sys.stderr, repair=repair)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        head = f"{'tier':<5} {'ok':>6} {'corrupt':>8} {'stale':>6} {'skipped':>8} {'checked':>10}"
        print(head)
        print("-" * len(head))
        for name, r in report.items():
            print(f"{name:<5} {r['ok']:>6} {r['corrupt']:>8} {r['stale']:>6} {r['skipped']:>8} "
                  f"{human_bytes(r['bytes']):>10}")
            for key in r["corrupt_keys"]:
                print(f"      deleted corrupt row {key}" if repair else f"      corrupt row {key}")
        if not repair and any(r["corrupt"] or r["stale"] for r in report.values()):
            print("nothing was deleted; `kvllama cache verify --repair` deletes corrupt and stale rows")
    return 1 if any(r["corrupt"] for r in report.values()) else 0


def verify_tiers(
    tiers: dict[str, Path], progress: TextIO | None = None, *, repair: bool = False
) -> dict[str, dict[str, Any]]:
    """Check every row of each tier in full; with ``repair``, delete the bad ones.

    Goes through :class:`FileTier` row by row rather than ``KvCache.verify``
    so that it can report progress. The checks are the same: the start-up
    scan (headers, sizes; rows of another block size are stale; entries that
    are not regular files are skipped) and then the full checksum of every row
    (``FileTier.get``). Without ``repair`` the tiers are opened read-only and
    nothing is deleted, not even dead writers' temporaries.
    """
    report: dict[str, dict[str, Any]] = {}
    block_size = CacheConfig.block_size
    for name, directory in tiers.items():
        tier = FileTier(name, directory, UNLIMITED, block_size, memory_backed=name == "shm",
                        read_only=not repair)
        scan = tier.scan()
        r = report[name] = {"ok": 0, "corrupt": scan.corrupt, "stale": scan.stale, "skipped": scan.skipped,
                            "temps_removed": scan.temps, "bytes": 0,
                            "corrupt_keys": [n.removesuffix(ROW_SUFFIX) for n in scan.corrupt_names]}
        bar = _bar(f"verifying {name}", sum(m.size for m in scan.metas), progress)
        for done, meta in enumerate(scan.metas, 1):
            try:
                ok = tier.get(meta.key) is not None
            except (CorruptRowError, OSError):
                if repair:
                    tier.remove(meta.key)
                r["corrupt"] += 1
                r["corrupt_keys"].append(meta.key.hex())
                ok = False
            r["ok"] += ok
            r["bytes"] += meta.size
            bar.set_postfix_str(f"{done}/{len(scan.metas)} rows", refresh=False)
            bar.update(meta.size)
        bar.close()
        tier.close()
    return report


def cmd_clear(args: argparse.Namespace) -> int:
    tiers = _file_tiers(args)  # already narrowed to --tier
    if not tiers:
        print("0 rows removed (no cache directory to clear)")
        return 0
    with open_cache(tiers, writable=True) as cache:
        removed = cache.clear()
    print(f"{removed} rows removed from {', '.join(f'{n} {p}' for n, p in tiers.items())}")
    return 0


# --- output helpers --------------------------------------------------------------


def _bar(label: str, total: int, stream: TextIO | None) -> tqdm:
    """A bytes bar (tqdm) on a terminal; silent when the stream is not one (logs, pipes, tests)."""
    return tqdm(total=total, desc=label, unit="B", unit_scale=True, unit_divisor=1024, file=stream,
                disable=stream is None or not stream.isatty(), leave=True)



def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"  # pragma: no cover


def human_age(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f}{unit}"
    return f"{seconds:.0f}s"
