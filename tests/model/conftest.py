"""Real-model fixtures: one engine with the embedded Gemma 3 270M, shared per session."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import kvllama

# Helper modules beside the tests (shared_prompts.py) import by name: pytest's importlib mode
# does not put test folders on sys.path, and conftest.py is loaded before the tests are.
if str(Path(__file__).parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).parent))

MODEL = "gemma"


@pytest.fixture(scope="session")
def engine() -> Iterator[kvllama.Engine]:
    with kvllama.Engine() as eng:
        eng.load_model(MODEL)
        yield eng


@pytest.fixture(scope="session")
def model_path(engine: kvllama.Engine) -> str:
    return engine.model_info(MODEL).path


@pytest.fixture
def canonical_child() -> Callable[[str], dict[str, Any]]:
    """Run a script next to this file in a fresh process with GGML_CPU_TILED_MM=0; its JSON facts.

    ggml reads the variable once per process, at its first matmul, so canonical
    decoding (and speculation, which needs it) cannot run in the test process.
    """

    def run(script: str) -> dict[str, Any]:
        env = {**os.environ, "GGML_CPU_TILED_MM": "0"}
        proc = subprocess.run([sys.executable, str(Path(__file__).with_name(script))], env=env,
                              capture_output=True, text=True, timeout=600, check=False)
        assert proc.returncode == 0, proc.stderr[-2000:]
        return json.loads(proc.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]

    return run
