"""Loading, model info, errors for bad files, tokenizer, templates, embeddings."""

from __future__ import annotations

import math
import shutil

import pytest

import kvllama
from kvllama.errors import (
    ContextOverflowError,
    InvalidChatContentError,
    InvalidOptionError,
    MalformedModelError,
    ModelFileNotFoundError,
)

MODEL = "gemma"  # loaded once per session by tests/model/conftest.py


def test_model_info_reports_every_field(engine):
    info = engine.model_info(MODEL)
    assert info.architecture == "gemma3" and info.quant == "Q4_K_M"
    assert info.n_layer == 18 and info.n_ctx_train == 32768
    assert 250_000_000 < info.n_params < 300_000_000
    assert info.size_bytes > 200_000_000
    assert info.memory_estimate_bytes > info.size_bytes
    ctx = info.context
    assert ctx["n_seq_max"] == 8 and ctx["n_ctx"] == ctx["n_ctx_seq"] * ctx["n_seq_max"]
    assert ctx["flash_attn"] == "off" and ctx["kv_unified"] is False
    assert info.phase == "idle" and info.pending == 0 and info.in_flight == 0
    assert info.last_cache_hit == {"kind": "cold", "prefix_len": 0, "source": "none"}
    assert info.loaded_at > 0 and info.chat_template_source == "builtin:plain"
    assert [m.id for m in engine.list_models()] == [MODEL]


def test_missing_file_is_a_typed_error(tmp_path):
    with kvllama.Engine() as eng, pytest.raises(ModelFileNotFoundError):
        eng.load_model("x", tmp_path / "nope.gguf")


def test_truncated_gguf_is_a_clear_error_and_the_process_survives(tmp_path, model_path, engine):
    truncated = tmp_path / "truncated.gguf"
    with open(model_path, "rb") as src, open(truncated, "wb") as dst:
        dst.write(src.read(20_000_000))
    not_gguf = tmp_path / "text.gguf"
    not_gguf.write_text("definitely not a model" * 10)
    with kvllama.Engine() as eng:
        with pytest.raises(MalformedModelError, match="truncated"):
            eng.load_model("t", truncated)
        with pytest.raises(MalformedModelError, match="not a GGUF"):
            eng.load_model("n", not_gguf)
        assert eng.list_models() == []
    # The shared engine is unaffected.
    assert engine.complete(MODEL, "ok", max_tokens=2, temperature=0).generated_tokens


def test_tail_corruption_caught_by_llama_cpp_is_a_typed_error(tmp_path, model_path):
    # Header intact, tensor data cut short by a few bytes: only llama.cpp can tell.
    cut = tmp_path / "cut.gguf"
    shutil.copyfile(model_path, cut)
    with open(cut, "r+b") as f:
        f.truncate(f.seek(0, 2) - 4096)
    with kvllama.Engine() as eng, pytest.raises(MalformedModelError):
        eng.load_model("c", cut)


def test_bad_option_fails_before_loading():
    with kvllama.Engine() as eng, pytest.raises(InvalidOptionError, match="type_k"):
        eng.load_model("x", "/does/not/matter.gguf", type_k="q2_k")


def test_context_overflow_names_both_numbers():
    with kvllama.Engine() as eng:
        eng.load_model("small", n_ctx=256, n_seq_max=1)
        prompt = "word " * 400
        with pytest.raises(ContextOverflowError) as info:
            eng.complete("small", prompt, max_tokens=4)
        n = len(eng.tokenize("small", prompt))
        assert info.value.prompt_tokens == n and info.value.n_ctx == 256
        assert f"{n}" in str(info.value) and "256" in str(info.value)
        # Generation that reaches the end of the context stops with "length".
        r = eng.complete("small", "word " * 200, max_tokens=200, temperature=0)
        assert r.finish_reason == "length" and r.committed_tokens <= 256


def test_tokenize_detokenize_round_trip(engine):
    text = "Hello, wörld! 你好 🌍 — tabs\tand\nnewlines"
    tokens = engine.tokenize(MODEL, text, add_special=False)
    assert engine.detokenize(MODEL, tokens) == text
    with_bos = engine.tokenize(MODEL, text)
    assert len(with_bos) == len(tokens) + 1 and with_bos[1:] == tokens


def test_embeddings_are_deterministic_and_distinguish_texts(engine):
    a1, b, a2 = engine.embed(MODEL, ["The cat sat on the mat.", "Quantum chromodynamics.",
                                     "The cat sat on the mat."])
    assert len(a1) == 640 and a1 == a2
    assert all(math.isfinite(x) for x in a1)
    assert a1 != b


def test_chat_template_fallback_and_builtin(engine):
    messages = [
        {"role": "user", "content": [{"type": "text", "text": "Hi "},
                                     {"type": "text", "text": "there"}]},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "Name a colour."},
    ]
    plain = engine.apply_chat_template(MODEL, messages, system="Be brief.")
    assert plain == ("Be brief.\n\nUser: Hi there\nAssistant: Hello!\nUser: Name a colour.\n"
                     "Assistant:")
    gemma = engine.apply_chat_template(MODEL, messages, system="Be brief.", template="gemma")
    assert gemma.startswith("<bos><start_of_turn>user\nBe brief.\n\nHi there<end_of_turn>")
    assert gemma.endswith("<start_of_turn>model\n")
    # A template that starts with BOS is not given a second one.
    r = engine.complete(MODEL, gemma, max_tokens=4, temperature=0)
    assert r.context_tokens[:2] != (2, 2) and r.context_tokens[0] == 2
    special = engine.tokenize(MODEL, "<start_of_turn>", add_special=False)
    assert len(special) == 1  # control tokens in prompts are parsed as such
    with pytest.raises(InvalidChatContentError):
        engine.apply_chat_template(MODEL, [{"role": "user", "content": [
            {"type": "image", "source": {"type": "base64", "data": ""}}]}])
