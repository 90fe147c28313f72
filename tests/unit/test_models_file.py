"""Which models ``kvllama serve`` serves: --model flags, a models directory, a models file."""

from __future__ import annotations

import argparse
import json

import pytest

from kvllama.cli_model import catalog, served_models
from kvllama.errors import InvalidOptionError
from kvllama.models_file import ServedModel, read_models_file, scan_models_dir

NAMED = {"default": None, "smollm2": "/pkg/smollm2.gguf"}


def test_model_flags_name_paths_and_one_bare_path_keeps_the_old_meaning():
    assert served_models(None) == [("default", None)]
    assert served_models(["/m/a.gguf"]) == [("default", "/m/a.gguf")]
    assert served_models(["default", "b=/m/b.gguf"]) == [("default", None), ("b", "/m/b.gguf")]
    for bad in (["a=/x", "a=/y"], ["nope", "b=/m/b.gguf"], ["=/x", "b=/y"]):
        with pytest.raises(SystemExit):
            served_models(bad)


def test_a_toml_models_file_gives_each_model_its_own_options(tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "models.toml").write_text(
        '[models.chat]\npath = "m/chat.gguf"\nn_ctx = 8192\nkeep_alive = "30m"\nadapters = ["a.gguf:0.5"]\n'
        "[models.default]\nn_seq_max = 2\n")
    got = read_models_file(str(tmp_path / "models.toml"), NAMED)
    assert got == [ServedModel("chat", str((tmp_path / "m" / "chat.gguf").resolve()),
                               {"n_ctx": 8192, "keep_alive": "30m", "adapters": ["a.gguf:0.5"]}),
                   ServedModel("default", None, {"n_seq_max": 2})]


def test_a_json_models_file_and_its_refusals(tmp_path):
    good = tmp_path / "models.json"
    good.write_text(json.dumps({"models": {"smollm2": {"n_ctx": 4096}}}))
    expected = [ServedModel("smollm2", "/pkg/smollm2.gguf", {"n_ctx": 4096})]
    assert read_models_file(str(good), NAMED) == expected
    for body in ("{", json.dumps({"models": {}}), json.dumps({"models": {"x": {}}}),
                 json.dumps({"models": {"x": 3}})):
        bad = tmp_path / "bad.json"
        bad.write_text(body)
        with pytest.raises(InvalidOptionError):
            read_models_file(str(bad), NAMED)


def test_a_models_dir_serves_every_gguf_by_stem_and_names_must_be_unique(tmp_path):
    for name in ("b.gguf", "a.gguf", "notes.txt"):
        (tmp_path / name).write_bytes(b"x")
    assert [m.name for m in scan_models_dir(str(tmp_path))] == ["a", "b"]
    with pytest.raises(InvalidOptionError):
        scan_models_dir(str(tmp_path / "nowhere"))
    args = argparse.Namespace(model=["a=/m/x.gguf"], models_dir=str(tmp_path), models_file=None)
    with pytest.raises(InvalidOptionError):
        catalog(args)  # "a" twice
    args = argparse.Namespace(model=None, models_dir=str(tmp_path), models_file=None)
    assert [m.name for m in catalog(args)] == ["a", "b"]  # no embedded default unless asked for


def test_a_models_file_gives_a_model_its_projector_and_serve_takes_one_for_one_model(tmp_path):
    from kvllama.cli_model import engine_spec
    from kvllama.serve_cli import add_serve_parser, server_config

    (tmp_path / "models.toml").write_text('[models.eyes]\npath = "v.gguf"\nmmproj = "proj/v-mmproj.gguf"\n'
                                          "[models.default]\n")
    got = read_models_file(str(tmp_path / "models.toml"), NAMED)
    assert got[0].options == {"mmproj": str((tmp_path / "proj" / "v-mmproj.gguf").resolve())}
    parser = argparse.ArgumentParser()
    add_serve_parser(parser.add_subparsers())
    with_file = parser.parse_args(["serve", "--models-file", str(tmp_path / "models.toml")])
    assert server_config(with_file).max_body_bytes == 64 << 20  # media need room
    one = parser.parse_args(["serve", "--mmproj", "/p/mm.gguf", "--max-media", "2",
                             "--max-media-bytes", "1MB"])
    assert engine_spec(one).options["mmproj"] == "/p/mm.gguf"
    config = server_config(one)
    assert config.media_limits.max_media == 2 and config.media_limits.max_bytes == 1 << 20
    kept = server_config(parser.parse_args(["serve", "--responses-max", "5", "--responses-ttl", "2h"]))
    assert (kept.responses_max_count, kept.responses_max_age) == (5, 7200.0)
    with pytest.raises(SystemExit, match="responses-ttl"):
        server_config(parser.parse_args(["serve", "--responses-ttl=-1s"]))
    assert server_config(parser.parse_args(["serve"])).max_body_bytes == 4 << 20
    with pytest.raises(SystemExit, match="models file"):
        two = ["--model", "default", "--model", "smollm2"]
        engine_spec(parser.parse_args(["serve", *two, "--mmproj", "/p"]))
