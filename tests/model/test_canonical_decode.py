"""Canonical decoding (decode steps as 2-row chunks), and speculation on it, on the real model.

With GGML_CPU_TILED_MM=0 a 2-row chunk computes its rows exactly like a
prefill (docs/llama-cpp-facts.md), so a reply's KV is canonical: turn 2 of a
session reuses turn 1's whole context, reply included, and still equals a
cold run of the same tokens; streams beside each other equal themselves
alone. Checked in a child process (ggml reads the variable once per process).
"""

from __future__ import annotations

import os

import pytest

import kvllama
from kvllama.errors import InvalidOptionError

pytestmark = pytest.mark.slow


def test_canonical_decoding_keeps_replies_and_stays_exact(canonical_child):
    facts = canonical_child("canonical_check.py")
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
