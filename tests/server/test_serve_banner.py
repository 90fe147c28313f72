"""``kvllama serve`` says where it listens, what it serves, and a curl that works as printed."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest


def _kvllama() -> list[str]:
    exe = Path(sys.executable).with_name("kvllama")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "kvllama.cli"]


def _read_banner(proc: subprocess.Popen[str], deadline: float) -> list[str]:
    """stdout lines up to the curl line (the banner's last required line)."""
    assert proc.stdout is not None
    lines: list[str] = []
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line.rstrip("\n"))
        if line.lstrip().startswith("try: curl "):
            return lines
    pytest.fail(f"no banner from kvllama serve; it printed: {lines}")


@pytest.mark.parametrize("api_key", [None, "sk-banner"])
def test_serve_prints_a_banner_whose_curl_works(tmp_path, api_key):
    if shutil.which("curl") is None:
        pytest.fail("this test runs the printed curl command: install curl")
    env = {**os.environ, "KVLLAMA_SHM_DIR": str(tmp_path / "shm")}
    env.pop("KVLLAMA_API_KEY", None)
    cmd = [*_kvllama(), "serve", "--port", "0", "--n-threads", "1", "--n-seq-max", "1",
           "--no-cache", "--served-model-name", "banner-model", "--log-level", "warning"]
    if api_key:
        cmd += ["--api-key", api_key]
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env) as proc:
        try:
            lines = _read_banner(proc, time.monotonic() + 120)
            reply = _run_printed_curl(lines, env, api_key)
        finally:
            proc.send_signal(signal.SIGINT)
            try:
                code = proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                raise
    text = "\n".join(lines)
    assert lines[0].startswith("kvllama is listening on http://127.0.0.1:"), text
    assert "'banner-model'" in text and ".gguf" in text
    if api_key:
        assert api_key not in text and "$KVLLAMA_API_KEY" in text
    else:
        assert "Authorization" not in text
    assert reply["object"] == "chat.completion" and reply["model"] == "banner-model", reply
    assert code == 0  # Ctrl-C is a clean stop


def _run_printed_curl(lines: list[str], env: dict[str, str], api_key: str | None) -> dict:
    curl = lines[-1].split("try: ", 1)[1]
    shell_env = {**env, "KVLLAMA_API_KEY": api_key or ""}
    done = subprocess.run(curl + " -s", shell=True, capture_output=True, text=True, timeout=120,
                          env=shell_env, check=False)
    try:
        return json.loads(done.stdout)
    except ValueError:
        pytest.fail(f"the printed curl ({curl}) answered: {done.stdout!r} {done.stderr!r}")
