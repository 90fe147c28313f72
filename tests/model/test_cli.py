"""The command line, run as a user would run it."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kvllama.cli", *args],
        capture_output=True, text=True, timeout=300, check=False,
    )


def test_complete_streams_generated_text():
    proc = run("complete", "--max-tokens", "16", "--temperature", "0", "--stats",
               "The capital of France is")
    assert proc.returncode == 0, proc.stderr
    assert len(proc.stdout.strip()) > 5
    assert "generated 16 tok" in proc.stderr
    assert "control-looking" not in proc.stderr  # llama.cpp's log is quiet by default


def test_models_prints_default_model_info():
    proc = run("models", "--json")
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert info["architecture"] == "gemma3" and info["quant"] == "Q4_K_M"


def test_bad_option_is_a_clear_error_with_exit_code_2():
    proc = run("complete", "--max-tokens", "4", "--temperature", "-3", "x")
    assert proc.returncode == 2
    assert "temperature" in proc.stderr
