"""Speculation only while it pays (decoding/spec_governor.py), and draft models' vocabulary check."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from kvllama.backend.draft_model import _check_vocab
from kvllama.decoding.spec_governor import MAX_PAUSE, SpeculationGovernor
from kvllama.errors import InvalidOptionError


def _steps_drafted(governor: SpeculationGovernor, steps: int, accepted: int, draft_s: float,
                   verify_s: float, plain_s: float) -> int:
    drafted = 0
    for _ in range(steps):
        if governor.should_draft():
            drafted += 1
            governor.drafted(accepted, draft_s, verify_s)
        else:
            governor.plain_step(plain_s)
    return drafted


def test_drafts_that_are_accepted_keep_being_made_and_grow():
    g = SpeculationGovernor()
    assert not g.should_draft()  # a plain step first: the yardstick
    g.plain_step(0.03)
    assert g.draft_length(8) == 1  # a first probe is one token
    # Every step drafts but one in 17: a plain step keeps the yardstick current.
    assert _steps_drafted(g, 102, accepted=5, draft_s=0.001, verify_s=0.04, plain_s=0.03) == 96
    assert g.draft_length(8) == 8 and g.draft_length(3) == 3


def test_drafts_that_miss_are_tried_ever_more_rarely():
    g = SpeculationGovernor()
    g.plain_step(0.03)
    drafted = _steps_drafted(g, 200, accepted=0, draft_s=0.001, verify_s=0.04, plain_s=0.03)
    assert 4 <= drafted <= 9  # probes after 1, 2, 4, ... 128 steps
    assert g.draft_length(8) == 1  # and each probe is one token
    assert g.pause == MAX_PAUSE


def test_accepted_drafts_that_cost_more_than_they_save_stop_too():
    # A draft model as slow as the target: 4 accepted tokens save 4 x 30 ms, drafting costs 200 ms.
    g = SpeculationGovernor()
    g.plain_step(0.03)
    assert _steps_drafted(g, 100, accepted=4, draft_s=0.2, verify_s=0.05, plain_s=0.03) < 12


def test_a_good_draft_after_bad_ones_resumes_drafting():
    g = SpeculationGovernor()
    g.plain_step(0.03)
    _steps_drafted(g, 20, accepted=0, draft_s=0.001, verify_s=0.04, plain_s=0.03)
    for _ in range(MAX_PAUSE + 1):
        if g.should_draft():
            break
    for _ in range(3):
        g.drafted(6, 0.001, 0.04)
    assert g.pays() and g.pause == 0 and g.should_draft()


def _vocab(n: int, eog: tuple[int, ...] = (1,), odd: int | None = None) -> SimpleNamespace:
    return SimpleNamespace(n_vocab=n, eog_ids=eog,
                           piece=lambda t, special=False: b"?" if t == odd else str(t).encode())


def test_a_draft_model_needs_the_targets_vocabulary():
    _check_vocab(_vocab(1000), _vocab(1000), "d.gguf")  # type: ignore[arg-type]
    with pytest.raises(InvalidOptionError, match="1000 tokens; this one has 999"):
        _check_vocab(_vocab(999), _vocab(1000), "d.gguf")  # type: ignore[arg-type]
    with pytest.raises(InvalidOptionError, match="end-of-generation"):
        _check_vocab(_vocab(1000, eog=(2,)), _vocab(1000), "d.gguf")  # type: ignore[arg-type]
    with pytest.raises(InvalidOptionError, match="token 0 differs"):
        _check_vocab(_vocab(1000, odd=0), _vocab(1000), "d.gguf")  # type: ignore[arg-type]


def test_draft_model_options_are_checked(stub_engine):
    with pytest.raises(InvalidOptionError, match="speculative_draft >= 1"):
        stub_engine(load={"canonical_decode": True, "draft_model": "d.gguf"})
    with pytest.raises(InvalidOptionError, match=r"loaded by llama\.cpp"):
        stub_engine(canonical_decode=True,
                    load={"canonical_decode": True, "speculative_draft": 4, "draft_model": "d.gguf"})


class _Missing:
    """A drafter whose guesses are never right (a token the stub does not produce here)."""

    def draft(self, context, n):
        return (3,) * n

    def close(self):
        pass


def test_a_drafter_that_misses_changes_nothing_and_is_paused(stub_engine):
    spec, _ = stub_engine(n_ctx_seq=512, canonical_decode=True,
                          load={"canonical_decode": True, "speculative_draft": 4})
    plain, _ = stub_engine(n_ctx_seq=512, canonical_decode=True, load={"canonical_decode": True})
    spec.models.get("s").loop.drafter = _Missing()
    prompt = "the quick brown fox jumps over the lazy dog " * 3
    a = spec.complete("s", prompt, max_tokens=80, temperature=0)
    b = plain.complete("s", prompt, max_tokens=80, temperature=0)
    assert a.generated_tokens == b.generated_tokens
    assert 0 < a.stats.drafted_tokens <= 8  # a handful of one-token probes, not 4 tokens every step
