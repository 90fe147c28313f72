"""Canonical decoding (decode steps as 2-row chunks), and speculation on it, on the real model.

With GGML_CPU_TILED_MM=0 a 2-row chunk computes its rows exactly like a
prefill (docs/llama-cpp-facts.md), so a reply's KV is canonical: turn 2 of a
session reuses turn 1's whole context, reply included, and still equals a
cold run of the same tokens; streams beside each other equal themselves
alone. Checked in a child process (ggml reads the variable once per process).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import kvllama
from kvllama.errors import InvalidOptionError

pytestmark = pytest.mark.slow


def test_canonical_decoding_keeps_replies_and_stays_exact():
    env = {**os.environ, "GGML_CPU_TILED_MM": "0"}
    script = Path(__file__).with_name("canonical_check.py")
    proc = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True,
                          timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    facts = json.loads(proc.stdout.strip().splitlines()[-1])
    assert facts["turn1_gen"] == 24
    assert facts["read"] == facts["expected_read"]  # prompt + reply (all but the undecoded last token)
    assert facts["sticky_equals_cold"] and facts["beside_equals_alone"]
    assert facts["repeat_len"] - facts["repeat_read"] < 8  # a restore may leave fewer than 8
    # Speculative decoding (prompt lookup) verifies drafts in the same kernel class: same tokens.
    assert facts["spec_same"] and facts["seeded_same"]
    assert facts["spec_accepted"] > 20 and facts["spec_accepted"] <= facts["spec_drafted"]


def test_canonical_decoding_is_refused_with_stock_kernels(engine):
    # This process runs llama.cpp's stock kernels: 2-row chunks differ from 8-row ones there.
    assert os.environ.get("GGML_CPU_TILED_MM") is None
    with kvllama.Engine(cache=None) as eng, pytest.raises(InvalidOptionError, match="GGML_CPU_TILED_MM=0"):
        eng.load_model("m", canonical_decode=True)
