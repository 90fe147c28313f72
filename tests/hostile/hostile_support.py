"""The hostile-input suite's harness: a real ``kvllama serve`` process, watched case by case.

Every case runs against one ``kvllama serve`` subprocess on the embedded
default model (n_threads=1, n_ctx 2048, n_seq_max 2), started once per
session under an address-space limit (``RLIMIT_AS``), so a request that
makes llama.cpp allocate without bound fails its test (``std::bad_alloc``,
or the process dies) instead of eating the machine.

After each case the harness checks what issue #9 asks of every hostile
input: the process is the same one (same pid, still running), ``/health``
answers, and a fixed greedy request (:data:`REFERENCE`) gives the same
answer as it did when the server first started. A case that killed or
wedged the server fails (it is also listed in the terminal summary), and the
next case gets a freshly started server.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from kvllama.bench.synthetic_projector import cached_multimodal_projector
from kvllama.server.sse import decode_frames

# The cap on the server's address space: a 270M model needs ~1.3 GiB of it; what llama.cpp's
# grammar parser allocates on a bad repetition must hit this, not the machine's memory.
ADDRESS_SPACE_LIMIT = 6 << 30
# Every answer must come within this (seconds), unless a case says otherwise.
CASE_TIMEOUT = 30.0
STARTUP_TIMEOUT = 180.0
# The model's per-sequence context is N_CTX / N_SEQ_MAX tokens.
N_CTX = 2048
N_SEQ_MAX = 2
MAX_TOKENS_LIMIT = 128
# Bytes per image or audio clip (kvllama serve --max-media-bytes): an oversized medium stays cheap to send.
MAX_MEDIA_BYTES = 200_000

REFERENCE = {"prompt": "The capital of France is", "max_tokens": 8, "temperature": 0}

# Server deaths and wedges seen this session (listed in the terminal summary).
INCIDENTS: list[str] = []


def _kvllama_command() -> list[str]:
    exe = Path(sys.executable).parent / "kvllama"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "kvllama.cli"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _limit_address_space() -> None:  # runs in the child, before exec
    resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE_LIMIT, ADDRESS_SPACE_LIMIT))


@dataclass
class Reference:
    text: str
    finish_reason: str
    completion_tokens: int


@dataclass
class ServerProcess:
    """One ``kvllama serve`` child; :meth:`start` again after it died gives a new one."""

    workdir: Path
    proc: subprocess.Popen[bytes] | None = None
    port: int = 0
    baseline: Reference | None = None
    starts: int = 0
    # True while the last case's after-check passed: the next case need not check again first.
    verified: bool = False
    log_path: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log_path = self.workdir / "server.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> None:
        self.stop()
        self.port = _free_port()
        self.starts += 1
        shm = self.workdir / f"shm-{self.starts}"
        cmd = [
            *_kvllama_command(), "serve", "--host", "127.0.0.1", "--port", str(self.port),
            "--n-threads", "1", "--n-ctx", str(N_CTX), "--n-seq-max", str(N_SEQ_MAX),
            "--max-tokens-limit", str(MAX_TOKENS_LIMIT), "--shm-dir", str(shm),
            "--ram-bytes", "256M", "--shm-bytes", "64M", "--log-level", "warning",
            # Images and audio go through the real projector path (a synthetic projector).
            "--mmproj", str(cached_multimodal_projector()), "--max-media-bytes", str(MAX_MEDIA_BYTES),
            "--max-body-bytes", str(4 << 20),  # the text-only default, which the huge-body cases probe
        ]
        log = open(self.log_path, "ab")  # noqa: SIM115 (the child owns it; closed below)
        log.write(f"\n==== start {self.starts}: {' '.join(cmd)}\n".encode())
        log.flush()
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     preexec_fn=_limit_address_space, env=env, start_new_session=True)
        log.close()
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"kvllama serve exited with {self.proc.returncode} while starting; "
                                   f"see {self.log_path}:\n{self.log_tail()}")
            if self.healthy(timeout=2.0):
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"kvllama serve did not answer /health in {STARTUP_TIMEOUT}s:\n"
                                   f"{self.log_tail()}")
            time.sleep(0.2)
        ref = self.reference_tokens()
        self.verified = True
        if self.baseline is None:
            self.baseline = ref
        elif ref != self.baseline:  # a restarted server must agree with the first one
            raise RuntimeError(f"restarted server's reference {ref} differs from {self.baseline}")

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self.proc = None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def healthy(self, timeout: float = 5.0) -> bool:
        try:
            r = httpx.get(f"{self.url}/health", timeout=timeout)
        except httpx.HTTPError:
            return False
        return r.status_code == 200 and r.json().get("status") == "ok"

    def reference_tokens(self, timeout: float = CASE_TIMEOUT) -> Reference:
        r = httpx.post(f"{self.url}/v1/completions", json=REFERENCE, timeout=timeout)
        assert r.status_code == 200, f"reference request answered {r.status_code}: {r.text[:500]}"
        body = r.json()
        choice = body["choices"][0]
        return Reference(choice["text"], choice["finish_reason"], body["usage"]["completion_tokens"])

    def rss_bytes(self) -> int:
        with open(f"/proc/{self.pid}/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        return 0

    def log_tail(self, n: int = 40) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(lines[-n:])

    def problem(self, pid: int | None = None) -> str | None:
        """What is wrong with the server now (None: alive, same pid, healthy, same reference)."""
        if not self.alive():
            code = self.proc.returncode if self.proc is not None else None
            return f"the server process died (exit status {code}); log tail:\n{self.log_tail()}"
        if pid is not None and self.pid != pid:
            return f"the server pid changed ({pid} -> {self.pid})"
        if not self.healthy():
            return "the server is running but /health does not answer ok"
        try:
            ref = self.reference_tokens()
        except (httpx.HTTPError, AssertionError) as exc:
            return f"the reference request failed: {exc!r}"
        if ref != self.baseline:
            return f"the reference request changed: {ref} != {self.baseline}"
        return None


class Hostile:
    """What a case uses: the server's URL, a client, and the after-case check."""

    def __init__(self, server: ServerProcess, case: str) -> None:
        self.server = server
        self.case = case
        self.pid = server.pid
        self.url = server.url
        self.client = httpx.Client(base_url=server.url, timeout=CASE_TIMEOUT)
        # Set by a case that leaves the server bloated (e.g. after a huge allocation).
        self.restart_after = False

    def post(self, path: str, body: Any = None, *, raw: bytes | None = None,
             headers: dict[str, str] | None = None, timeout: float = CASE_TIMEOUT) -> httpx.Response:
        """POST a JSON body (lone surrogates travel as \\uXXXX escapes), or ``raw`` bytes as they are."""
        content = raw if raw is not None else json.dumps(body).encode()
        h = {"content-type": "application/json", **(headers or {})}
        return self.client.post(path, content=content, headers=h, timeout=timeout)

    def assert_survived(self) -> None:
        """The process is the same one, /health is ok and the reference answer is unchanged."""
        problem = self.server.problem(self.pid)
        self.server.verified = problem is None
        if problem is not None:
            INCIDENTS.append(f"{self.case}: {problem.splitlines()[0]}")
            pytest.fail(f"after {self.case}: {problem}")

    def send(self, method: str, path: str, content: bytes | None, headers: dict[str, str],
             timeout: float) -> tuple[httpx.Response | None, BaseException | None, float]:
        """One request: (response, None, seconds) or (None, the client's exception, seconds)."""
        started = time.monotonic()
        try:
            r = self.client.request(method, path, content=content, headers=headers, timeout=timeout)
        except httpx.HTTPError as exc:
            return None, exc, time.monotonic() - started
        return r, None, time.monotonic() - started

    def fail(self, problems: list[str]) -> None:
        """Fail the case with ``problems``, adding whether the server survived it."""
        survived = self.server.problem(self.pid)
        if survived is not None:
            INCIDENTS.append(f"{self.case}: {survived.splitlines()[0]}")
            problems = [*problems, survived]
        pytest.fail(f"{self.case}: " + "\n".join(problems))

    def close(self) -> None:
        self.client.close()


def answer_problem(r: httpx.Response | None, error: BaseException | None, seconds: float,
                   limit: float, expect: tuple[int, ...] = ()) -> str | None:
    """What is wrong with an answer (None: a 2xx/4xx in time, JSON, or a well-formed SSE or NDJSON stream)."""
    if r is None:
        return f"no answer after {seconds:.1f}s (limit {limit:.0f}s): {error!r}"
    where = f"{r.request.method} {r.request.url.path}"
    if expect and r.status_code not in expect:
        return f"{where} answered {r.status_code} (expected {expect}): {r.text[:1000]}"
    if not (200 <= r.status_code < 300 or 400 <= r.status_code < 500):
        return f"{where} answered {r.status_code}: {r.text[:1000]}"
    if seconds > limit:
        return f"{where} took {seconds:.1f}s (limit {limit:.0f}s)"
    ctype = r.headers.get("content-type", "")
    if ctype.startswith("text/event-stream") and r.status_code == 200:
        try:
            frames = decode_frames(r.text)
        except ValueError as exc:
            return f"{where}: a stream frame is not JSON ({exc}): {r.text[:500]}"
        return None if frames else f"{where}: an empty event stream"
    if ctype.startswith("application/x-ndjson") and r.status_code == 200:
        return _ndjson_problem(where, r.text)
    if not ctype.startswith("application/json"):
        return f"{where} answered {r.status_code} with content-type {ctype!r}: {r.text[:300]}"
    try:
        body = r.json()
    except ValueError:
        return f"{where} answered {r.status_code} with a body that is not JSON: {r.text[:300]}"
    if r.status_code >= 400 and not (isinstance(body, dict) and "error" in body):
        return f"{where} answered {r.status_code} without an error object: {r.text[:300]}"
    return None


def _ndjson_problem(where: str, text: str) -> str | None:
    """An Ollama stream: every line a JSON object, the last one done (or an error line)."""
    try:
        lines = [json.loads(line) for line in text.splitlines() if line.strip()]
    except ValueError as exc:
        return f"{where}: a stream line is not JSON ({exc}): {text[:500]}"
    if not lines or not all(isinstance(x, dict) for x in lines):
        return f"{where}: an empty or malformed NDJSON stream: {text[:500]}"
    last = lines[-1]
    return None if last.get("done") is True or "error" in last else f"{where}: the stream never said done"


def assert_json_answer(r: httpx.Response, *, allow: tuple[int, ...] = ()) -> Any:
    """A 2xx or 4xx answer whose body is JSON (the error shape of the route family for 4xx)."""
    assert 200 <= r.status_code < 500 or r.status_code in allow, (
        f"{r.request.method} {r.request.url.path} answered {r.status_code}: {r.text[:1000]}")
    ctype = r.headers.get("content-type", "")
    assert ctype.startswith("application/json"), f"content-type {ctype!r}: {r.text[:300]}"
    body = r.json()
    if r.status_code >= 400:
        assert isinstance(body, dict) and ("error" in body), body
    return body

