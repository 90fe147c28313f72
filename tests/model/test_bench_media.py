"""``kvllama bench media`` end to end with the real Gemma 3 270M and the synthetic projector (one run).

Checks what the bench reports, not how fast: the JSON has its fields, the warm turn restored at least
the medium's positions from the cache, and no medium was encoded again on a warm turn.
"""

from __future__ import annotations

import json

from kvllama.cli import main

FIELDS = ("prepare_ms", "encode_ms", "cold_ttft_ms", "warm_ttft_ms", "turn2_cold_ttft_ms",
          "cold_over_warm", "turn2_cold_over_warm", "encode_share", "media_tokens", "warm_read_min",
          "media_end", "warm_encodes")


def test_bench_media_runs_once_and_the_warm_turn_comes_from_the_cache(capsys):
    code = main(["bench", "media", "--runs", "1", "--image-size", "64x48", "--text-words", "12", "--audio",
                 "--audio-seconds", "1", "--n-threads", "2", "--json"])
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    assert report["benchmark"] == "media" and report["synthetic_projector"] is True
    assert [r["kind"] for r in report["rows"]] == ["image", "audio"]
    for row in report["rows"]:
        assert all(row[f] is not None for f in FIELDS), row
        assert row["media_tokens"] > 0 and row["encode_ms"] > 0 and row["warm_ttft_ms"] > 0
        assert row["warm_read_min"] >= row["media_end"]  # the medium came back from turn 1's row
        assert row["warm_covers_media"] and row["warm_sources"] == ["cache"]  # a row, not a kept slot
        assert row["warm_encodes"] == 0
