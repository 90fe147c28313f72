"""Hostile HTTP below what a client library will send: lying Content-Length, slow bodies, bad framing.

Each case talks to the real server over a raw socket, then checks that the
server survived (same process, /health, reference answer unchanged).
"""

from __future__ import annotations

import json
import socket
import time

import httpx
from hostile_support import Hostile, assert_json_answer

JSON = {"Content-Type": "application/json"}


def _connect(hostile: Hostile) -> socket.socket:
    return socket.create_connection(("127.0.0.1", hostile.server.port), timeout=30)


def _request_head(path: str, headers: dict[str, str]) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1", *(f"{k}: {v}" for k, v in headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _read_response(sock: socket.socket, limit: float = 30.0) -> bytes:
    sock.settimeout(limit)
    chunks = []
    try:
        while chunk := sock.recv(65536):
            chunks.append(chunk)
            data = b"".join(chunks)
            head, sep, body = data.partition(b"\r\n\r\n")
            if sep:
                length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                               if line.lower().startswith(b"content-length:")), None)
                if length is not None and len(body) >= length:
                    break
    except (TimeoutError, ConnectionResetError):
        pass  # no (more) answer: what matters is that the server survived
    return b"".join(chunks)


def test_content_length_longer_than_body_then_close(hostile: Hostile) -> None:
    with _connect(hostile) as s:
        s.sendall(_request_head("/v1/completions", {**JSON, "Content-Length": "100"}))
        s.sendall(b'{"prompt": "hi"')
    hostile.assert_survived()


def test_slow_body_does_not_block_others(hostile: Hostile) -> None:
    """A client that sends half a body and waits must not hold up anyone else."""
    with _connect(hostile) as s:
        s.sendall(_request_head("/v1/completions", {**JSON, "Content-Length": "200"}))
        s.sendall(b'{"prompt": "')
        started = time.monotonic()
        r = httpx.post(f"{hostile.url}/v1/completions", json={"prompt": "Hello", "max_tokens": 4}, timeout=30)
        assert r.status_code == 200, r.text
        assert time.monotonic() - started < 10
    hostile.assert_survived()


def test_slow_clients_many(hostile: Hostile) -> None:
    """Twenty half-sent requests held open at once: the server still answers a normal one."""
    socks = []
    try:
        for _ in range(20):
            s = _connect(hostile)
            s.sendall(_request_head("/v1/messages", {**JSON, "Content-Length": "5000"}))
            s.sendall(b'{"max_tokens": 4, "messages": [')
            socks.append(s)
        r = httpx.post(f"{hostile.url}/v1/completions", json={"prompt": "Hello", "max_tokens": 4}, timeout=30)
        assert r.status_code == 200, r.text
    finally:
        for s in socks:
            s.close()
    hostile.assert_survived()


def test_declared_length_over_limit(hostile: Hostile) -> None:
    with _connect(hostile) as s:
        s.sendall(_request_head("/v1/completions",
                                {"Content-Type": "application/json", "Content-Length": "99999999999"}))
        raw = _read_response(s)
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413"), raw[:300]
    assert "error" in json.loads(body)
    hostile.assert_survived()


def test_chunked_body_over_limit(hostile: Hostile) -> None:
    """A chunked body of 5 MiB (no Content-Length to refuse up front): a 413, read in bounded memory."""
    with _connect(hostile) as s:
        s.sendall(_request_head("/v1/completions",
                                {"Content-Type": "application/json", "Transfer-Encoding": "chunked"}))
        chunk = b"a" * 65536
        try:
            for _ in range(80):
                s.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            s.sendall(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered and closed early: fine
        raw = _read_response(s)
    assert raw.startswith(b"HTTP/1.1 413"), raw[:300]
    hostile.assert_survived()


def test_invalid_chunked_framing(hostile: Hostile) -> None:
    with _connect(hostile) as s:
        s.sendall(_request_head("/v1/completions",
                                {"Content-Type": "application/json", "Transfer-Encoding": "chunked"}))
        s.sendall(b"zz\r\nnot hex\r\n0\r\n\r\n")
        _read_response(s, limit=5)
    hostile.assert_survived()


def test_garbage_request_line(hostile: Hostile) -> None:
    with _connect(hostile) as s:
        s.sendall(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 GARBAGE\r\n\r\n")  # a TLS hello, roughly
        _read_response(s, limit=5)
    hostile.assert_survived()


def _send_and_read(hostile: Hostile, data: bytes, limit: float = 10) -> bytes:
    with _connect(hostile) as s:
        try:
            s.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            return b""  # refused before it was all sent
        return _read_response(s, limit=limit)


def test_huge_header(hostile: Hostile) -> None:
    head = _request_head("/v1/completions", {"X-Big": "h" * 200_000, "Content-Length": "2"})
    _send_and_read(hostile, head + b"{}")
    hostile.assert_survived()


def test_many_headers(hostile: Hostile) -> None:
    headers = {f"X-H{i}": "v" for i in range(5000)}
    _send_and_read(hostile, _request_head("/v1/completions", {**headers, "Content-Length": "2"}) + b"{}")
    hostile.assert_survived()


def test_disconnect_during_non_streamed_generation(hostile: Hostile) -> None:
    """The client leaves while its (non-streamed) request generates: it is cancelled, nothing leaks."""
    body = json.dumps({"prompt": "Write a long story:", "max_tokens": 128, "temperature": 0}).encode()
    for _ in range(3):
        with _connect(hostile) as s:
            s.sendall(_request_head("/v1/completions", {"Content-Type": "application/json",
                                                        "Content-Length": str(len(body))}) + body)
            time.sleep(0.3)
    r = httpx.post(f"{hostile.url}/v1/completions", json={"prompt": "Hello", "max_tokens": 4}, timeout=30)
    assert_json_answer(r)
    hostile.assert_survived()


def test_connect_and_close_storm(hostile: Hostile) -> None:
    for _ in range(100):
        s = _connect(hostile)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")  # RST on close
        s.close()
    hostile.assert_survived()


def test_pipelined_requests(hostile: Hostile) -> None:
    """Three requests in one write on one connection (HTTP/1.1 pipelining): three answers, in order."""
    one = json.dumps({"prompt": "Hi", "max_tokens": 2}).encode()
    req = _request_head("/v1/completions", {"Content-Type": "application/json",
                                            "Content-Length": str(len(one))}) + one
    with _connect(hostile) as s:
        s.sendall(req * 3)
        s.settimeout(30)
        data = b""
        deadline = time.monotonic() + 30
        while data.count(b"HTTP/1.1 ") < 3 and time.monotonic() < deadline:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    assert data.count(b"HTTP/1.1 200") == 3, data[:1000]
    hostile.assert_survived()
