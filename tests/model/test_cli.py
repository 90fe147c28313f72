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


def test_bench_throughput_runs_engine_and_floor_side_by_side(tmp_path):
    out = tmp_path / "tput.json"
    proc = run("bench", "throughput", "--streams", "1,2", "--prompt-tokens", "16", "--max-tokens", "4",
               "--repeat", "1", "--n-threads", "1", "--json", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "engine/floor" in proc.stdout
    rows = json.loads(out.read_text())["rows"]
    assert [r["streams"] for r in rows] == [1, 2]
    for r in rows:
        assert r["generated_tokens"] == 4 * r["streams"]
        assert r["engine_tokens_per_second"] > 0 and r["floor_tokens_per_second"] > 0
    assert proc.stderr == ""  # no progress bar when stderr is not a terminal


def test_bench_serve_throughput_runs_a_server_and_the_floor_side_by_side(tmp_path):
    out = tmp_path / "http.json"
    proc = run("bench", "serve", "--throughput", "1,2", "--model", "tiny", "--prompt-tokens", "16",
               "--max-tokens", "4", "--repeat", "1", "--n-threads", "1", "--json", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "server/floor" in proc.stdout
    rows = json.loads(out.read_text())
    assert [r["streams"] for r in rows] == [1, 2]
    for r in rows:
        assert r["generated_tokens"] == 4 * r["streams"]
        assert r["server_tokens_per_second"] > 0 and r["floor_tokens_per_second"] > 0


def test_bench_floor_generates_the_engines_greedy_tokens():
    """The floor does the engine's work: same prompts, same greedy tokens, through bare llama.cpp."""
    from kvllama import Engine
    from kvllama.bench.floor import Floor
    from kvllama.bench.throughput import MODEL_ID, make_prompts
    from kvllama.models.default import default_model_path
    from kvllama.options import ModelOptions

    path = default_model_path()
    options = {"n_seq_max": 2, "n_threads": 1}
    with Engine(cache=None) as engine, Floor(path, ModelOptions.from_kwargs(**options)) as floor:
        engine.load_model(MODEL_ID, path, **options)
        prompts = make_prompts(engine, 2, 24)
        _seconds, tokens, floor_tokens = floor.run(prompts, 6)
        assert tokens == 12
        for prompt, expected in zip(prompts, floor_tokens, strict=True):
            result = engine.complete(MODEL_ID, prompt, max_tokens=6, temperature=0, stop_at_eog=False)
            assert list(result.generated_tokens) == expected


def test_lora_flag_loads_an_adapter_that_changes_the_completion(tmp_path):
    from kvllama.bench.synthetic_lora import write_lora
    from kvllama.models.default import default_model_path

    adapter = write_lora(default_model_path(), str(tmp_path / "support.gguf"), seed=1)
    args = ("complete", "--max-tokens", "10", "--temperature", "0", "The capital of France is")
    plain, with_lora = run(*args), run(*args[:-1], "--lora", f"{adapter}:1.0", args[-1])
    assert plain.returncode == 0 and with_lora.returncode == 0, with_lora.stderr
    assert plain.stdout != with_lora.stdout
    assert run(*args[:-1], "--lora", f"{adapter}:0", args[-1]).stdout == plain.stdout
    bad = run(*args[:-1], "--lora", str(tmp_path / "missing.gguf"), args[-1])
    assert bad.returncode != 0 and "missing.gguf" in bad.stderr


def test_canonical_decode_flag_sets_the_kernels_it_needs():
    # In a fresh process the flag sets GGML_CPU_TILED_MM=0 before llama.cpp runs; without it the
    # same option would be refused (tests/model/test_canonical_decode.py).
    proc = run("complete", "--max-tokens", "8", "--temperature", "0", "--canonical-decode", "--stats",
               "The capital of France is")
    assert proc.returncode == 0, proc.stderr
    assert "generated 8 tok" in proc.stderr


def test_bench_spec_prints_both_sides_and_the_same_tokens():
    proc = run("bench", "spec", "--streams", "2", "--repeat", "1", "--max-tokens", "12")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    copy = next(line for line in lines if line.startswith("copy, 1 stream"))
    assert copy.split()[-2] == "yes" and "/" in copy.split()[-1]  # accepted/drafted
    assert any(line.startswith("throughput, 2 streams") and " yes " in line for line in lines)


def test_complete_takes_media_files_with_a_projector(tmp_path):
    from kvllama.bench.media_samples import png
    from kvllama.bench.synthetic_projector import cached_multimodal_projector

    first, second = tmp_path / "a.png", tmp_path / "b.png"
    first.write_bytes(png(20, 20, 1))
    second.write_bytes(png(20, 20, 2))
    base = ("complete", "--max-tokens", "8", "--temperature", "0", "--no-cache",
            "--mmproj", str(cached_multimodal_projector()))
    a = run(*base, "--media", str(first), "--stats", "A photograph of")
    b = run(*base, "--media", str(second), "A photograph of")
    assert a.returncode == 0 and b.returncode == 0, a.stderr + b.stderr
    n_prompt = int(a.stderr.split("prompt ", 1)[1].split(" tok", 1)[0])
    assert n_prompt > 64 and a.stdout != b.stdout  # the image's 64 positions are in the prompt, and matter
    bad = run("complete", "--max-tokens", "2", "--media", str(first), "x")
    assert bad.returncode != 0 and "without a projector" in bad.stderr
