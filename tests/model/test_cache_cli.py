"""`kvllama bench cache` and `kvllama cache ...` on the real model (small sizes, to stay quick)."""

from __future__ import annotations

import json

import pytest

import kvllama
from kvllama import cli
from kvllama.bench.cache import run_bench_cache
from kvllama.bench.cache_report import format_report
from kvllama.kvcache import CacheConfig

pytestmark = pytest.mark.slow


def test_bench_cache_warm_beats_cold_from_every_tier():
    report = run_bench_cache(None, {}, sizes=[256], repeat=1, agents=2, turns=2, system_tokens=200,
                             agent_max_tokens=4)
    [row] = report["prefix"]
    assert row["prefix_tokens"] == 256
    for tier in ("ram", "shm", "disk"):
        assert row["restored_tokens"][tier] == 256  # the warm request restored the whole prefix
        assert row["warm_ttft"][tier] < row["cold_ttft"], (tier, row)
        assert row["speedup"][tier] > 1
    agents = report["agents"]
    assert agents["on"]["requests"] == agents["off"]["requests"] == 4
    assert agents["on"]["cached_prompt_fraction"] > 0.5 and agents["off"]["cached_prompt_fraction"] == 0
    assert agents["on"]["ttft_mean"] < agents["off"]["ttft_mean"]
    [restart] = report["restart"]["rows"]
    assert restart["restored_tokens"] == 256 and restart["restart_ttft"] < restart["cold_ttft"]
    assert report["restart"]["rows_adopted"] >= 3
    assert "(c) first turn after a restart" in format_report(report)
    json.dumps(report)


def test_cache_commands_on_rows_the_engine_wrote(tmp_path, capsys):
    disk = tmp_path / "disk"
    with kvllama.Engine(cache=CacheConfig(ram_bytes=0, shm_dir=None, disk_dir=disk)) as engine:
        engine.load_model("m")
        prompt = "Notes: " + " ".join(f"item {i} is a lantern by the harbor" for i in range(40))
        engine.complete("m", prompt, max_tokens=4, temperature=0)
        n_prompt = len(engine.tokenize("m", prompt))
    where = ["--shm-dir", str(tmp_path / "no-shm"), "--disk-dir", str(disk)]
    assert cli.main(["cache", "list", *where, "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {r["reason"] for r in rows} == {"cold", "finish"}  # the prompt's prefill row and prompt + reply
    assert max(r["n_tokens"] for r in rows) >= n_prompt
    assert cli.main(["cache", "inspect", rows[0]["key"][:12], *where, "--json"]) == 0
    inputs = json.loads(capsys.readouterr().out)["key_inputs"]
    assert inputs["model_fingerprint"].startswith("sha256:") and "llama-cpp-python" in inputs["state_version"]
    assert inputs["n_seq_max"] == 8 and inputs["swa_full"] is True and inputs["format"] == 2
    assert inputs["numerics"]["use_extra_bufts"] is False and "CPU" in inputs["numerics"]["system"]
    assert cli.main(["cache", "verify", *where, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["disk"] == {
        "ok": len(rows), "corrupt": 0, "stale": 0, "skipped": 0, "temps_removed": 0,
        "bytes": sum(r["size"] for r in rows), "corrupt_keys": [],
    }
