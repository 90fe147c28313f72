"""One real engine (the embedded Gemma 3 270M) behind one real uvicorn server, per test session.

n_threads=1: on a small shared machine, llama.cpp's worker threads spin at
barriers while other processes hold the cores; one thread was ~50x faster
there than two and is plenty for a 270M model.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import anthropic
import openai
import pytest

import kvllama
from kvllama.server import ServerConfig, ServerThread, create_app

MODEL = "gemma"
# The same weights loaded with Qwen-style markers, for thinking and tool-call tests.
AGENT_MODEL = "gemma-agent"
THINKING_KEY = b"server-test-thinking-key"


@dataclass(frozen=True)
class Served:
    url: str
    engine: kvllama.Engine


@pytest.fixture(scope="session")
def served() -> Iterator[Served]:
    with kvllama.Engine(thinking_key=THINKING_KEY) as engine:
        engine.load_model(MODEL, n_seq_max=2, n_ctx=4096, n_threads=1)
        engine.load_model(AGENT_MODEL, n_seq_max=2, n_ctx=4096, n_threads=1, markers="qwen3")
        app = create_app(engine, ServerConfig(max_tokens_limit=1024))
        with ServerThread(app) as url:
            yield Served(url, engine)


@pytest.fixture(scope="session")
def oai(served: Served) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{served.url}/v1", api_key="unused", max_retries=0) as client:
        yield client


@pytest.fixture(scope="session")
def claude(served: Served) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(base_url=served.url, api_key="unused", max_retries=0) as client:
        yield client
