"""`kvllama cache ...` over file tiers a KvCache wrote, the cache flags, and `bench cache` on the stub."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import pytest

import kvllama
import kvllama.api.engine_spec
from kvllama import cli, cli_model
from kvllama.backend.stub import StubBackend, StubConfig
from kvllama.bench.cache import run_bench_cache
from kvllama.bench.cache_report import format_report
from kvllama.cache_cli import engine_cache_config, parse_bytes
from kvllama.errors import InvalidOptionError
from kvllama.kvcache import CacheConfig, KeyRoot, KvCache, default_disk_dir

ROOT = KeyRoot(model_fingerprint="sha256:0123abcd", type_k="f16", type_v="f16", flash_attn=False,
               kv_unified=False, n_seq_max=4, state_version="test", cache_salt="tenant-a")


def save_rows(directory: Path, tier: str, n: int, start: int = 0) -> list[str]:
    """Rows written the way the engine writes them (default block size), in one file tier."""
    kwargs = {"ram_bytes": 0, "durable": False, "shm_dir": None, "disk_dir": None, f"{tier}_dir": directory}
    keys = []
    with KvCache(CacheConfig(**kwargs)) as cache:
        for i in range(start, start + n):
            tokens = list(range(1000 * i, 1000 * i + 100 + i))
            key = cache.save(ROOT, tokens, bytes([i % 256]) * 3000, "cold" if i % 2 else "finish", sync=True)
            assert key is not None
            keys.append(key.hex())
    return keys


@pytest.fixture
def tiers(tmp_path: Path) -> dict[str, object]:
    shm, disk = tmp_path / "shm", tmp_path / "disk"
    return {"shm": shm, "disk": disk, "shm_keys": save_rows(shm, "shm", 2),
            "disk_keys": save_rows(disk, "disk", 3, start=10)}


def run(capsys: pytest.CaptureFixture[str], *argv: object) -> tuple[int, str, str]:
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def where(t: dict[str, object]) -> list[object]:
    return ["--shm-dir", t["shm"], "--disk-dir", t["disk"]]


def test_list_json_shows_every_row_of_both_tiers(capsys, tiers):
    code, out, _ = run(capsys, "cache", "list", *where(tiers), "--json")
    assert code == 0
    rows = json.loads(out)
    assert sorted(r["key"] for r in rows) == sorted([*tiers["shm_keys"], *tiers["disk_keys"]])
    by_key = {r["key"]: r for r in rows}
    assert all(by_key[k]["tier"] == "shm" for k in tiers["shm_keys"])
    assert all(by_key[k]["tier"] == "disk" for k in tiers["disk_keys"])
    first = by_key[tiers["disk_keys"][0]]
    assert (first["n_tokens"], first["hits"], first["reason"]) == (110, 0, "finish")
    assert first["size"] > 3000 and first["age"] >= 0


def test_list_table_and_tier_filter(capsys, tiers):
    code, out, _ = run(capsys, "cache", "list", *where(tiers))
    assert code == 0
    assert "tier" in out and "tokens" in out and "reason" in out
    assert tiers["shm_keys"][0][:16] in out and "5 rows" in out
    code, out, _ = run(capsys, "cache", "list", *where(tiers), "--tier", "disk", "--json")
    assert code == 0 and {r["tier"] for r in json.loads(out)} == {"disk"}


def test_list_does_not_create_missing_directories(capsys, tmp_path):
    missing = tmp_path / "nowhere"
    code, out, _ = run(capsys, "cache", "list", "--shm-dir", missing, "--json")
    assert code == 0 and json.loads(out) == []
    assert not missing.exists()


def test_inspect_by_key_prefix_shows_key_inputs_but_not_the_salt(capsys, tiers):
    key = tiers["disk_keys"][1]
    code, out, _ = run(capsys, "cache", "inspect", key[:10], *where(tiers), "--json")
    assert code == 0
    info = json.loads(out)
    assert info["key"] == key and info["tier"] == "disk" and info["n_tokens"] == 111
    inputs = info["key_inputs"]
    assert inputs["model_fingerprint"] == "sha256:0123abcd" and inputs["type_k"] == "f16"
    assert inputs["cache_salt"].startswith("blake2b:") and "tenant-a" not in out
    code, out, _ = run(capsys, "cache", "inspect", key, *where(tiers))
    assert code == 0 and "key inputs" in out and "sha256:0123abcd" in out


def test_inspect_unknown_or_ambiguous_key_is_exit_1(capsys, tiers):
    code, _, err = run(capsys, "cache", "inspect", "ffffffffffffffff0", *where(tiers))
    assert code == 1 and "no row" in err
    code, _, err = run(capsys, "cache", "inspect", "", *where(tiers))
    assert code == 1 and "5 rows" in err


def flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def test_verify_reports_corrupt_rows_and_only_repair_deletes_them(capsys, tiers):
    disk = Path(tiers["disk"])  # type: ignore[arg-type]
    bad_blob = disk / f"{tiers['disk_keys'][0]}.kvr"
    flip_byte(bad_blob, -100)  # inside the state blob: only the full checksum sees it
    bad_header = Path(tiers["shm"]) / f"{tiers['shm_keys'][0]}.kvr"  # type: ignore[arg-type]
    flip_byte(bad_header, 20)  # the header: caught by the start-up scan
    code, out, err = run(capsys, "cache", "verify", *where(tiers), "--json")
    assert code == 1  # corruption was found
    report = json.loads(out)
    assert report["disk"]["ok"] == 2 and report["disk"]["corrupt"] == 1
    assert report["disk"]["corrupt_keys"] == [tiers["disk_keys"][0]]
    assert report["shm"]["ok"] == 1 and report["shm"]["corrupt"] == 1
    assert report["shm"]["corrupt_keys"] == [tiers["shm_keys"][0]]
    assert bad_blob.exists() and bad_header.exists()  # a check is a read
    assert err == ""  # no progress bar when stderr is not a terminal
    code, out, _ = run(capsys, "cache", "verify", *where(tiers))
    assert code == 1 and "corrupt row" in out and "--repair" in out
    assert bad_blob.exists() and bad_header.exists()
    code, out, _ = run(capsys, "cache", "verify", *where(tiers), "--repair")
    assert code == 1 and "deleted corrupt row" in out
    assert not bad_blob.exists() and not bad_header.exists()
    code, out, _ = run(capsys, "cache", "verify", *where(tiers))
    assert code == 0 and "disk" in out and "corrupt" in out
    code, out, _ = run(capsys, "cache", "list", *where(tiers), "--json")
    assert len(json.loads(out)) == 3


def test_list_and_inspect_delete_nothing(capsys, tiers):
    disk = Path(tiers["disk"])  # type: ignore[arg-type]
    corrupt = disk / f"{tiers['disk_keys'][0]}.kvr"
    flip_byte(corrupt, 20)  # fails the header check every start-up scan makes
    temp = disk / f".{'ab' * 16}.999999999.0000.tmp"  # a temporary of a writer that is gone
    temp.write_bytes(b"partial")
    stale_dir = Path(tiers["shm"]) / "stale"  # type: ignore[arg-type]
    save_rows(stale_dir, "shm", 1)  # default block size; read below with another one
    before = sorted(p.name for p in disk.iterdir())
    code, out, _ = run(capsys, "cache", "list", *where(tiers), "--json")
    assert code == 0 and len(json.loads(out)) == 4  # the corrupt row is not listed ...
    code, _, _ = run(capsys, "cache", "inspect", tiers["disk_keys"][1], *where(tiers), "--json")
    assert code == 0
    code, _, _ = run(capsys, "cache", "verify", *where(tiers), "--json")
    assert code == 1
    assert sorted(p.name for p in disk.iterdir()) == before  # ... and not deleted either
    ro = CacheConfig(ram_bytes=0, shm_dir=None, disk_dir=stale_dir, block_size=32, read_only=True)
    with KvCache(ro) as cache:
        assert cache.rows() == [] and cache.metrics()["stale_rows"] == {"disk": 1}
        assert cache.save(ROOT, list(range(64)), b"x" * 64, "cold", sync=True) is None
    assert len(list(stale_dir.glob("*.kvr"))) == 1


def test_verify_draws_progress_on_a_terminal(tiers):
    from kvllama.cache_cli import verify_tiers

    class Tty:
        def __init__(self) -> None:
            self.text = ""

        def isatty(self) -> bool:
            return True

        def write(self, s: str) -> None:
            self.text += s

        def flush(self) -> None:
            pass

    tty = Tty()
    report = verify_tiers({"disk": Path(tiers["disk"])}, progress=tty)  # type: ignore[arg-type]
    assert report["disk"]["ok"] == 3
    assert "verifying disk" in tty.text and "3/3 rows" in tty.text


def test_clear_one_tier_then_all(capsys, tiers):
    code, out, _ = run(capsys, "cache", "clear", *where(tiers), "--tier", "shm")
    assert code == 0 and out.startswith("2 rows removed")
    assert not list(Path(tiers["shm"]).glob("*.kvr"))  # type: ignore[arg-type]
    assert len(list(Path(tiers["disk"]).glob("*.kvr"))) == 3  # type: ignore[arg-type]
    code, out, err = run(capsys, "cache", "clear", *where(tiers), "--tier", "ram")
    assert code == 0 and "running kvllama process" in err
    code, out, _ = run(capsys, "cache", "clear", *where(tiers))
    assert code == 0 and out.startswith("3 rows removed")
    code, out, _ = run(capsys, "cache", "list", *where(tiers), "--json")
    assert json.loads(out) == []


# --- the flags every engine command shares ------------------------------------------


def engine_args(*argv: str) -> argparse.Namespace:
    return cli._parser().parse_args(["serve", *argv])


def test_parse_bytes():
    assert parse_bytes("1048576") == 1 << 20
    assert parse_bytes("512M") == parse_bytes("512MiB") == parse_bytes("512mb") == 512 << 20
    assert parse_bytes("1.5G") == 3 << 29
    assert parse_bytes("0") == 0
    with pytest.raises(argparse.ArgumentTypeError):
        parse_bytes("lots")


def test_cache_flags_build_the_engine_cache_config(tmp_path, monkeypatch):
    assert engine_cache_config(engine_args("--no-cache")) is None
    default = engine_cache_config(engine_args())
    assert default == CacheConfig()
    config = engine_cache_config(engine_args(
        "--shm-dir", str(tmp_path / "s"), "--disk-dir", str(tmp_path / "d"),
        "--ram-bytes", "64M", "--shm-bytes", "0", "--disk-bytes", "2G"))
    assert config is not None
    assert (config.shm_dir, config.disk_dir) == (str(tmp_path / "s"), str(tmp_path / "d"))
    assert (config.ram_bytes, config.shm_bytes, config.disk_bytes) == (64 << 20, 0, 2 << 30)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    config = engine_cache_config(engine_args("--disk"))
    assert config is not None and config.disk_dir == default_disk_dir() == str(tmp_path / "xdg/kvllama/kv")


def test_load_hands_the_cache_config_to_the_engine(tmp_path, monkeypatch):
    real_engine = kvllama.Engine

    def stub_engine(**kwargs: object) -> kvllama.Engine:
        return real_engine(backend_factory=lambda _p, _o: StubBackend(StubConfig()), **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(kvllama.api.engine_spec, "Engine", stub_engine)
    with cli_model.load(engine_args("--disk-dir", str(tmp_path / "d"), "--ram-bytes", "1M")) as engine:
        assert engine.cache is not None
        config = engine.cache.config
        assert config.disk_dir == str(tmp_path / "d") and config.ram_bytes == 1 << 20
        assert os.path.isdir(tmp_path / "d")
    with cli_model.load(engine_args("--no-cache")) as engine:
        assert engine.cache is None


# --- bench cache on the stub backend (structure only; timings need the real model) --------


def test_bench_cache_runs_every_part_on_the_stub():
    lines: list[str] = []
    report = run_bench_cache(
        None, {"n_threads": 1}, sizes=[128, 192], repeat=2, agents=2, turns=2, system_tokens=150,
        agent_max_tokens=4, progress=lines.append,
        backend_factory=lambda _p, _o: StubBackend(StubConfig(n_ctx_seq=1024, decode_delay=0.001)),
    )
    assert report["sizes"] == [128, 192] and report["repeat"] == 2
    for row in report["prefix"]:
        assert row["restored_tokens"] == {t: row["prefix_tokens"] for t in ("ram", "shm", "disk")}
        assert len(row["cold_runs"]) == 6 and all(len(v) == 2 for v in row["warm_runs"].values())
        assert set(row["speedup"]) == {"ram", "shm", "disk"}
    agents = report["agents"]
    assert agents["on"]["requests"] == agents["off"]["requests"] == 2 * 2 * 2
    assert agents["off"]["hit_kinds"] == {"cold": 8} and agents["off"]["cached_prompt_fraction"] == 0
    assert agents["on"]["cached_prompt_fraction"] > 0.5 and agents["on"]["prewarm_seconds"] is not None
    assert agents["ratio_mean"] > 0
    restart = report["restart"]
    assert restart["rows_adopted"] > 0
    assert [r["restored_tokens"] for r in restart["rows"]] == [128, 192]
    text = format_report(report)
    assert text.count("| prefix tokens |") == 2 and "| on |" in text and "| off |" in text
    assert any(line.startswith("[restart]") for line in lines)
    json.dumps(report)  # JSON-ready


def test_bench_cache_rejects_unaligned_sizes():
    with pytest.raises(InvalidOptionError, match="sizes"):
        run_bench_cache(None, sizes=[100])
