"""The synthetic LoRA writer: metadata, tensor names and shapes as llama.cpp's adapter loader wants them.

Only GGUF headers are read (the adapter back with ``gguf.GGUFReader``, the base
model with the module's own header reader); no model is loaded.
"""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import pytest

from kvllama.bench.synthetic_lora import BaseModelInfo, read_base_model, write_lora
from kvllama.models.default import default_model_path

N_LAYERS = 18  # Gemma 3 270M
TARGETS = ("attn_q", "attn_v")
RANK = 8


@pytest.fixture(scope="module")
def model_path() -> str:
    return str(default_model_path())


@pytest.fixture(scope="module")
def base(model_path: str) -> BaseModelInfo:
    return read_base_model(model_path)


@pytest.fixture(scope="module")
def adapter_path(model_path: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    out = tmp_path_factory.mktemp("lora") / "adapter.gguf"
    return write_lora(model_path, str(out), rank=RANK, alpha=16.0, seed=0, targets=TARGETS)


@pytest.fixture(scope="module")
def reader(adapter_path: str) -> gguf.GGUFReader:
    return gguf.GGUFReader(adapter_path)


def _expected_weights(targets: tuple[str, ...]) -> list[str]:
    return [f"blk.{n}.{t}.weight" for n in range(N_LAYERS) for t in targets]


def test_base_model_header(base: BaseModelInfo) -> None:
    assert base.architecture == "gemma3"
    assert base.block_count == N_LAYERS
    # ggml ne order: ne[0] is the input width (n_embd 640), ne[1] the output width.
    assert base.shapes["blk.0.attn_q.weight"] == (640, 1024)
    assert base.shapes["blk.0.attn_v.weight"] == (640, 256)
    assert base.shapes["token_embd.weight"] == (640, 262144)


def test_write_returns_the_output_path(model_path: str, tmp_path: Path) -> None:
    out = str(tmp_path / "a.gguf")
    assert write_lora(model_path, out) == out
    assert Path(out).stat().st_size > 0


def test_metadata(reader: gguf.GGUFReader) -> None:
    fields = reader.fields
    assert fields["general.architecture"].contents() == "gemma3"
    assert fields["general.type"].contents() == "adapter"
    assert fields["adapter.type"].contents() == "lora"
    alpha = fields["adapter.lora.alpha"]
    assert alpha.types == [gguf.GGUFValueType.FLOAT32]
    assert alpha.contents() == pytest.approx(16.0)


def test_a_pair_of_tensors_for_every_layer_and_target(reader: gguf.GGUFReader) -> None:
    names = [t.name for t in reader.tensors]
    expected = [f"{w}.lora_{ab}" for w in _expected_weights(TARGETS) for ab in "ab"]
    assert sorted(names) == sorted(expected)
    assert len(names) == len(set(names)) == N_LAYERS * len(TARGETS) * 2


def test_shapes_pass_llama_cpp_checks(reader: gguf.GGUFReader, base: BaseModelInfo) -> None:
    """llama-adapter.cpp: W.ne[0] == a.ne[0], W.ne[1] == b.ne[1], a.ne[1] == b.ne[0] (the rank)."""
    tensors = {t.name: t for t in reader.tensors}
    for weight in _expected_weights(TARGETS):
        n_in, n_out = base.shapes[weight]
        a, b = tensors[f"{weight}.lora_a"], tensors[f"{weight}.lora_b"]
        assert [int(x) for x in a.shape] == [n_in, RANK]
        assert [int(x) for x in b.shape] == [RANK, n_out]
        assert a.tensor_type == b.tensor_type == gguf.GGMLQuantizationType.F32
        assert a.data.shape == (RANK, n_in)  # numpy order: ne reversed
        assert b.data.shape == (n_out, RANK)


def test_both_factors_are_nonzero(reader: gguf.GGUFReader) -> None:
    for t in reader.tensors:
        data = np.asarray(t.data)
        assert np.all(np.isfinite(data))
        assert np.count_nonzero(data) == data.size, t.name
        assert 0.01 < float(data.std()) < 0.04, t.name  # std 0.02


def test_same_seed_same_bytes_other_seed_differs(model_path: str, adapter_path: str, tmp_path: Path) -> None:
    again = write_lora(model_path, str(tmp_path / "again.gguf"), rank=RANK, seed=0, targets=TARGETS)
    other = write_lora(model_path, str(tmp_path / "other.gguf"), rank=RANK, seed=1, targets=TARGETS)
    first = Path(adapter_path).read_bytes()
    assert Path(again).read_bytes() == first
    other_bytes = Path(other).read_bytes()
    assert len(other_bytes) == len(first)
    assert other_bytes != first


def test_other_targets_rank_and_alpha(model_path: str, base: BaseModelInfo, tmp_path: Path) -> None:
    targets = ("attn_output", "ffn_down")
    out = write_lora(model_path, str(tmp_path / "o.gguf"), rank=4, alpha=2.5, targets=targets)
    r = gguf.GGUFReader(out)
    assert r.fields["adapter.lora.alpha"].contents() == pytest.approx(2.5)
    tensors = {t.name: t for t in r.tensors}
    assert len(tensors) == N_LAYERS * len(targets) * 2
    for weight in _expected_weights(targets):
        n_in, n_out = base.shapes[weight]
        assert [int(x) for x in tensors[f"{weight}.lora_a"].shape] == [n_in, 4]
        assert [int(x) for x in tensors[f"{weight}.lora_b"].shape] == [4, n_out]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"targets": ("attn_qq",)}, "no tensor 'blk.0.attn_qq.weight'"),
        ({"targets": ("attn_q_norm",)}, "not a 2-D weight"),
        ({"targets": ()}, "at least one"),
        ({"rank": 0}, "rank"),
        ({"std": 0.0}, "std"),
    ],
)
def test_bad_arguments(model_path: str, tmp_path: Path, kwargs: dict, match: str) -> None:
    out = tmp_path / "bad.gguf"
    with pytest.raises(ValueError, match=match):
        write_lora(model_path, str(out), **kwargs)
    assert not out.exists()


def test_not_a_gguf(tmp_path: Path) -> None:
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"not a gguf file at all" * 4)
    with pytest.raises(ValueError, match="GGUF"):
        write_lora(str(junk), str(tmp_path / "out.gguf"))
