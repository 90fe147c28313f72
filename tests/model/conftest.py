"""Real-model fixtures: one engine with the embedded Gemma 3 270M, shared per session."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

import kvllama

MODEL = "gemma"


@pytest.fixture(scope="session")
def engine() -> Iterator[kvllama.Engine]:
    with kvllama.Engine() as eng:
        eng.load_model(MODEL)
        yield eng


@pytest.fixture(scope="session")
def model_path(engine: kvllama.Engine) -> str:
    return engine.model_info(MODEL).path
