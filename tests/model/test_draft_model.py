"""Speculation from a draft model (``draft_model``) on the real model: exact, and paused when useless.

Checked in a child process with GGML_CPU_TILED_MM=0 (canonical decoding needs
it from the process start; see test_canonical_decode.py).
"""

from __future__ import annotations

import pytest

import kvllama
from kvllama.errors import InvalidOptionError, ModelFileNotFoundError

pytestmark = pytest.mark.slow


def test_draft_models_never_change_tokens_and_useless_ones_are_paused(canonical_child):
    facts = canonical_child("draft_model_check.py")
    for task in ("copy", "story"):
        own, tiny = facts[f"{task}/self"], facts[f"{task}/tiny"]
        assert own["same"] and tiny["same"], facts
        # The target as its own draft guesses its own greedy tokens: (nearly) all accepted.
        assert own["drafted"] > 0 and own["accepted"] >= 0.8 * own["drafted"], facts
        # Random weights guess wrong; the governor falls back to rare one-token probes.
        assert tiny["accepted"] <= tiny["drafted"] <= 12, facts
    assert facts["beside_same"] and facts["seeded_same"]


def test_a_draft_model_must_exist_and_needs_speculative_draft(tmp_path):
    with kvllama.Engine(cache=None) as eng:
        with pytest.raises(InvalidOptionError, match="speculative_draft >= 1"):
            eng.load_model("m", canonical_decode=True, draft_model="x.gguf")
        with pytest.raises((ModelFileNotFoundError, InvalidOptionError)):
            eng.load_model("m", draft_model=str(tmp_path / "missing.gguf"), speculative_draft=4)
