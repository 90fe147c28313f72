"""The tiny random-weight Gemma 3 (kvllama.bench.tiny_model): it loads, generates, is deterministic."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

import kvllama
from kvllama.backend.protocol import Backend
from kvllama.bench.tiny_model import HPARAMS, tiny_model_path, write_tiny_model
from kvllama.models.factory import llama_backend_factory
from kvllama.options import ModelOptions

TINY = "tiny"
N_VOCAB = 262_144
SENTENCE = "The history of the printing press begins in Mainz, 1450 — naïve café façade 🦙."


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_model(tmp_path_factory.mktemp("tiny") / "tiny.gguf")


@pytest.fixture(scope="module")
def tiny_engine(tiny_path: Path) -> Iterator[tuple[kvllama.Engine, list[Backend]]]:
    backends: list[Backend] = []

    def factory(path: str | None, options: ModelOptions) -> Backend:
        backends.append(llama_backend_factory(path, options))
        return backends[-1]

    with kvllama.Engine(cache=None, backend_factory=factory) as eng:
        eng.load_model(TINY, tiny_path)
        yield eng, backends


def _expected_params() -> int:
    """token_embd, output_norm, then per block 4+2 norms, q/o, k/v and the three FFN matrices."""
    n_embd, n_ff = HPARAMS["embedding_length"], HPARAMS["feed_forward_length"]
    head = HPARAMS["attention.key_length"]
    q, kv = HPARAMS["attention.head_count"] * head, HPARAMS["attention.head_count_kv"] * head
    block = 4 * n_embd + 2 * head + 2 * q * n_embd + 2 * kv * n_embd + 3 * n_ff * n_embd
    return N_VOCAB * n_embd + n_embd + HPARAMS["block_count"] * block


def test_loads_and_generates_greedily(tiny_engine: tuple[kvllama.Engine, list[Backend]]) -> None:
    engine, backends = tiny_engine
    info = engine.model_info(TINY)
    assert (info.architecture, info.quant, info.n_layer) == ("gemma3", "F16", 2)
    assert info.n_params == _expected_params()
    d = backends[0].description
    assert (d.n_embd, d.n_vocab, d.n_swa) == (32, N_VOCAB, 512)
    r = engine.complete(TINY, SENTENCE, max_tokens=16, temperature=0)
    assert len(r.generated_tokens) == 16 and r.finish_reason == "length"
    again = engine.complete(TINY, SENTENCE, max_tokens=16, temperature=0)
    assert again.generated_tokens == r.generated_tokens


def test_same_seed_same_bytes_other_seed_differs(tiny_path: Path, tmp_path: Path) -> None:
    same = write_tiny_model(tmp_path / "same.gguf", seed=0).read_bytes()
    assert same == tiny_path.read_bytes()
    other = write_tiny_model(tmp_path / "other.gguf", seed=1).read_bytes()
    assert len(other) == len(same) and other != same


def test_tokenizer_matches_the_default_model(
    tiny_engine: tuple[kvllama.Engine, list[Backend]], engine: kvllama.Engine
) -> None:
    tiny, _ = tiny_engine
    ids = engine.tokenize("gemma", SENTENCE)
    assert tiny.tokenize(TINY, SENTENCE) == ids
    assert tiny.detokenize(TINY, ids) == engine.detokenize("gemma", ids)
    chat = "<start_of_turn>user\nhi<end_of_turn>\n<start_of_turn>model\n"
    assert tiny.tokenize(TINY, chat) == engine.tokenize("gemma", chat)


def test_cached_path_is_written_once(
    tiny_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    path = tiny_model_path()
    assert path.parent == tmp_path / "kvllama" and path.name.startswith("tiny-gemma3-")
    assert path.read_bytes() == tiny_path.read_bytes()
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp file left behind
    mtime = path.stat().st_mtime_ns
    assert tiny_model_path() == path and path.stat().st_mtime_ns == mtime
