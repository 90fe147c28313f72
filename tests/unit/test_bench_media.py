"""``kvllama bench media``'s pure parts: --image-size parsing, the summary's medians and ratios, the table.

No model and no timing here: the numbers are given, so the arithmetic and the wording are checked
exactly (the bench itself measures in one run; tests/model/test_bench_media.py runs it).
"""

from __future__ import annotations

import argparse

import pytest

from kvllama.bench.media import SYNTHETIC_NOTE, add_bench_media_parser, format_report, parse_size, summarise


def sample(encode: float, cold: float, warm: float, turn2_cold: float, *, read: int = 120,
           encodes: int = 0) -> dict[str, object]:
    return {"prepare": 0.002, "encode": encode, "cold": cold, "cold_prefill": cold - 0.01, "media_tokens": 64,
            "turn1_tokens": 113, "warm_prepare": 0.003, "warm": warm, "warm_read": read, "media_end": 69,
            "turn2_tokens": 145, "warm_encodes": encodes, "warm_source": "cache", "turn2_cold": turn2_cold}


@pytest.mark.parametrize(("text", "size"), [("640x480", (640, 480)), ("32X16", (32, 16)), ("1x1", (1, 1))])
def test_image_size_parses_width_by_height(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["640", "640x", "x480", "0x480", "640x-1", "axb", "640x480x3", "9000x10"])
def test_a_bad_image_size_is_a_usage_error(text):
    with pytest.raises(argparse.ArgumentTypeError, match="WIDTHxHEIGHT"):
        parse_size(text)


def test_the_subcommand_parses_its_options():
    parser = argparse.ArgumentParser()
    add_bench_media_parser(parser.add_subparsers(dest="bench"))
    args = parser.parse_args(["media", "--runs", "3", "--image-size", "320x200", "--audio", "--json"])
    assert (args.runs, args.image_size, args.audio, args.json, args.audio_seconds) == (3, (320, 200), True,
                                                                                         True, 5.0)
    defaults = parser.parse_args(["media"])
    assert (defaults.runs, defaults.image_size, defaults.text_words) == (5, (640, 480), 40)
    assert not defaults.audio
    assert defaults.model is None and defaults.mmproj is None


def test_summary_takes_medians_and_ratios_of_them():
    row = summarise("image", "640x480", [sample(0.004, 0.400, 0.100, 0.440),
                                         sample(0.006, 0.300, 0.150, 0.450),
                                         sample(0.005, 0.360, 0.120, 0.480)])
    assert (row["encode_ms"], row["cold_ttft_ms"], row["warm_ttft_ms"], row["turn2_cold_ttft_ms"]) == (
        5.0, 360.0, 120.0, 450.0)
    assert row["cold_over_warm"] == 3.0  # a ratio of medians, not a median of ratios
    assert row["turn2_cold_over_warm"] == 3.75
    assert row["encode_share"] == round(5.0 / 360.0, 3)
    assert (row["warm_read_min"], row["media_end"], row["warm_covers_media"]) == (120, 69, True)
    assert (row["warm_encodes"], row["warm_sources"], row["runs"]) == (0, ["cache"], 3)


def test_summary_flags_a_warm_turn_that_fell_short_or_encoded():
    row = summarise("audio", "5 s", [sample(0.02, 0.3, 0.1, 0.3),
                                     sample(0.02, 0.3, 0.1, 0.3, read=40, encodes=1)])
    assert row["warm_read_min"] == 40 and not row["warm_covers_media"]
    assert row["warm_encodes"] == 1


def test_report_prints_one_row_per_medium_and_the_synthetic_note():
    rows = [summarise("image", "640x480", [sample(0.004, 0.4, 0.1, 0.44)]),
            summarise("audio", "5 s", [sample(0.03, 0.3, 0.1, 0.33, read=40, encodes=2)])]
    report = {"model": "m.gguf", "mmproj": "p.gguf", "synthetic_projector": True, "runs": 1, "text_words": 40,
              "rows": rows}
    text = format_report(report)
    assert ("| image 640x480 | 64 / 113 / 145 | 2.0 / 3.0 | 4.0 | 400.0 | 100.0 | 440.0 | 4.00x | 4.40x "
            "| 1% |") in text
    assert "| audio 5 s |" in text and "| 10% |" in text
    assert "which covers the medium (it ends at 69); media_encoded did not grow" in text
    assert "does NOT cover" in text and "media_encoded grew by 2" in text
    assert SYNTHETIC_NOTE in text and "synthetic" in text
    assert SYNTHETIC_NOTE not in format_report({**report, "synthetic_projector": False})
