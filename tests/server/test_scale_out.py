"""``kvllama serve --replicas 2``: a local Ray cluster, two engines, kvllama's router in front.

The multi-turn workload (two groups of users, each group sharing a system
prompt, three rounds, users of a round at once) goes through the ingress
with the official openai SDK. Every later turn must land on the replica that
served the conversation's earlier turns (``x-kvllama-replica``), reuse its
cached prefix, and get the reply a single ``kvllama serve`` with the same
flags gives.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import pytest

from kvllama.bench.media_samples import data_url, png
from kvllama.bench.synthetic_projector import cached_multimodal_projector

pytestmark = pytest.mark.slow

# With the synthetic projector: picture conversations go through the ingress too.
FLAGS = ["--n-threads", "1", "--n-seq-max", "4", "--n-ctx", "8192", "--log-level", "warning",
         "--mmproj", str(cached_multimodal_projector())]
GROUPS = 2
USERS_PER_GROUP = 2
ROUNDS = 3
WORDS = ("river stone lantern copper meadow violet harbor thunder marble orchard falcon ember "
         "glacier saffron compass velvet timber quartz willow beacon").split()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _kvllama() -> list[str]:
    exe = Path(sys.executable).with_name("kvllama")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "kvllama.cli"]


class Server:
    """``kvllama serve`` in its own process group; ready once its banner's curl line is printed."""

    def __init__(self, extra: list[str], tmp: Path, env_extra: dict[str, str] | None = None) -> None:
        self.port = _free_port()
        env = {**os.environ, "KVLLAMA_SHM_DIR": str(tmp / "shm"), **(env_extra or {})}
        env.pop("KVLLAMA_API_KEY", None)
        self.proc = subprocess.Popen([*_kvllama(), "serve", "--port", str(self.port), *FLAGS, *extra],
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env,
                                     start_new_session=True)
        self.url = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 300
        assert self.proc.stdout is not None
        seen = []
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                self.close()
                pytest.fail(f"kvllama serve {extra} exited before listening: {seen}")
            seen.append(line)
            if line.lstrip().startswith("try: curl "):
                return
        self.close()
        pytest.fail(f"kvllama serve {extra} printed no banner: {seen}")

    def close(self) -> int | None:
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                return self.proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(30)
        return self.proc.returncode


@pytest.fixture(scope="module")
def replicated(tmp_path_factory) -> Iterator[Server]:
    # Ray sends a request only to a replica that tells its queue length within a deadline
    # (100 ms, doubling on retries); a replica busy for a moment misses it. 5 ms makes that
    # happen on every probe, so routing must hold when replicas are slow to answer (before
    # the router waited for its first choice, a turn here moved replicas on a loaded machine).
    server = Server(["--replicas", "2"], tmp_path_factory.mktemp("replicated"),
                    {"RAY_SERVE_QUEUE_LENGTH_RESPONSE_DEADLINE_S": "0.005"})
    try:
        _wait_for_reports(server.url, 2)
        yield server
    finally:
        assert server.close() == 0  # Ctrl-C stops Serve and the Ray cluster cleanly


@pytest.fixture(scope="module")
def single(tmp_path_factory) -> Iterator[Server]:
    server = Server([], tmp_path_factory.mktemp("single"))
    try:
        yield server
    finally:
        server.close()


def _wait_for_reports(url: str, replicas: int) -> None:
    """Until the router has a report from every replica (their first routing stats)."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        status = httpx.get(f"{url}/status", timeout=30).json()
        if len(status.get("scale_out", {}).get("replicas", {})) >= replicas:
            return
        time.sleep(0.2)
    pytest.fail(f"the router never heard from {replicas} replicas")


def _system(group: int) -> str:
    words = [WORDS[(group * 7 + i * 3) % len(WORDS)] for i in range(300)]
    return f"You are assistant {group} of the {WORDS[group]} team. Notes: " + " ".join(words)


def _question(user: int, rnd: int) -> str:
    words = " ".join(WORDS[(user * 5 + rnd * 11 + i) % len(WORDS)] for i in range(60))
    return f"User {user}, round {rnd}: which of these words come first? {words}"


def _conversations(url: str) -> dict[tuple[int, int], list[tuple[str, str, int, int]]]:
    """(group, user) -> per round: (reply, replica header, cached tokens, prompt tokens)."""
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=600)
    users = [(g, u) for g in range(GROUPS) for u in range(USERS_PER_GROUP)]
    history: dict[tuple[int, int], list[dict[str, str]]] = {
        k: [{"role": "system", "content": _system(k[0])}] for k in users}
    out: dict[tuple[int, int], list[tuple[str, str, int, int]]] = {k: [] for k in users}

    def turn(key: tuple[int, int], rnd: int) -> None:
        messages = [*history[key], {"role": "user", "content": _question(key[0] * 10 + key[1], rnd)}]
        raw = client.chat.completions.with_raw_response.create(
            model="default", messages=messages, max_tokens=12, temperature=0)  # type: ignore[arg-type]
        reply = raw.parse()
        text = reply.choices[0].message.content or ""
        details = reply.usage.prompt_tokens_details if reply.usage else None
        out[key].append((text, raw.headers.get("x-kvllama-replica", ""),
                         (details.cached_tokens or 0) if details else 0, reply.usage.prompt_tokens))
        history[key] = [*messages, {"role": "assistant", "content": text}]

    with ThreadPoolExecutor(len(users)) as pool:
        for rnd in range(ROUNDS):
            list(pool.map(turn, users, [rnd] * len(users)))
    client.close()
    return out


def test_every_later_turn_lands_where_its_conversation_is_and_replies_match_a_single_server(
    replicated, single
):
    routed = _conversations(replicated.url)
    alone = _conversations(single.url)
    # Where each turn went, with its cached and prompt tokens: the failure messages' context.
    where = {k: [(t[1], t[2], t[3]) for t in v] for k, v in routed.items()}
    for key, turns in routed.items():
        first_replica = turns[0][1]
        assert first_replica, "the ingress names the replica that served each generation"
        for rnd, (_text, replica, cached, _prompt) in enumerate(turns[1:], start=1):
            assert replica == first_replica, f"user {key} round {rnd} went elsewhere: {where}"
            # The conversation's earlier prompt is reused: everything up to the previous reply.
            assert cached >= turns[rnd - 1][3] - 64, (key, rnd, cached, turns[rnd - 1][3])
        assert [t[0] for t in turns] == [t[0] for t in alone[key]], f"user {key}: replies differ"
        # One engine with a slot per user: compaction gives kept sequences up, and a turn whose own
        # slot went must restore its own row from the cache, not cut a neighbour's slot back
        # to the shared system prompt.
        for rnd, (_text, _replica, cached, _prompt) in enumerate(alone[key][1:], start=1):
            assert cached >= alone[key][rnd - 1][3] - 64, ("single", key, rnd, cached)
    assert len({t[0][1] for t in routed.values()}) == 2, f"four users over two replicas use both: {where}"
    metrics = httpx.get(f"{replicated.url}/metrics", timeout=30).text
    assert 'kvllama_routed_requests_total{kind="affinity"}' in metrics
    affinity = _sample(metrics, 'kvllama_routed_requests_total{kind="affinity"}')
    assert affinity >= GROUPS * USERS_PER_GROUP * (ROUNDS - 1)
    assert metrics.count("kvllama_replica_cached_blocks{") == 2


def test_sessions_stick_streams_work_and_errors_are_typed_through_the_ingress(replicated, single):
    client = openai.OpenAI(base_url=f"{replicated.url}/v1", api_key="unused", max_retries=0, timeout=600)
    homes = set()
    messages = [{"role": "user", "content": "Name a colour."}]
    for _ in range(3):
        raw = client.chat.completions.with_raw_response.create(
            model="default", messages=messages, max_tokens=6, temperature=0,  # type: ignore[arg-type]
            extra_headers={"x-session-id": "sticky-1"})
        homes.add(raw.headers["x-kvllama-replica"])
        messages = [*messages, {"role": "assistant", "content": raw.parse().choices[0].message.content or ""},
                    {"role": "user", "content": "Another."}]
    assert len(homes) == 1
    streamed = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(
        model="default", messages=[{"role": "user", "content": "Count to five."}], max_tokens=10,
        temperature=0, stream=True) if c.choices)
    count = [{"role": "user", "content": "Count to five."}]
    plain = client.chat.completions.create(model="default", messages=count, max_tokens=10,  # type: ignore[arg-type]
                                           temperature=0)
    assert streamed == plain.choices[0].message.content
    too_long = {"model": "default", "prompt": "word " * 3000, "max_tokens": 4}
    got = httpx.post(f"{replicated.url}/v1/completions", json=too_long, timeout=120)
    want = httpx.post(f"{single.url}/v1/completions", json=too_long, timeout=120)
    assert got.status_code == want.status_code == 400
    assert got.json()["error"]["type"] == want.json()["error"]["type"]
    ended = httpx.request("DELETE", f"{replicated.url}/sessions/sticky-1", timeout=60)
    assert ended.status_code == 200 and ended.json()["deleted"] is True
    client.close()


def test_a_picture_conversation_goes_through_the_ingress_and_stays_on_its_replica(replicated, single):
    """The ingress tokenizes the media to route, the replica tokenizes them again (media chunks
    are native handles of one process); turn 2 lands where turn 1 ran, reuses the image, and
    both turns equal a single server's."""
    def conversation(url: str) -> list[tuple[str, str, int]]:
        out = []
        with openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=600) as client:
            messages: list[dict] = [{"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": data_url(png(48, 48, 77))}},
                {"type": "text", "text": "What do you see in this photograph of a garden?"}]}]
            for question in ("Which plant is the tallest one there?", ""):
                raw = client.chat.completions.with_raw_response.create(
                    model="default", messages=messages, max_tokens=8, temperature=0)  # type: ignore[arg-type]
                reply = raw.parse()
                text = reply.choices[0].message.content or ""
                details = reply.usage.prompt_tokens_details if reply.usage else None
                out.append((text, raw.headers.get("x-kvllama-replica", ""),
                            (details.cached_tokens or 0) if details else 0))
                messages = [*messages, {"role": "assistant", "content": text},
                            {"role": "user", "content": question}]
        return out

    routed, alone = conversation(replicated.url), conversation(single.url)
    assert [t[0] for t in routed] == [t[0] for t in alone]
    assert routed[0][1] and routed[1][1] == routed[0][1]
    assert routed[1][2] > 64  # the image's 64 positions (and the text before them) were reused


def _sample(metrics: str, name: str) -> float:
    for line in metrics.splitlines():
        if line.startswith(name):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in /metrics")
