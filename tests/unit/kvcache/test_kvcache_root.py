"""The key root of a loaded model: every option that changes a row's bytes or numbers is in it."""

from __future__ import annotations

from dataclasses import fields, replace
from types import SimpleNamespace
from typing import Any

import pytest

from kvllama.backend.protocol import ContextShape
from kvllama.models import fingerprint
from kvllama.options import ModelOptions


def backend_for(options: ModelOptions) -> Any:
    """What key_root reads of a backend: the model path and the context shape the options give."""
    n_ctx = options.n_ctx or 4096 * options.n_seq_max
    shape = ContextShape(
        n_ctx=n_ctx, n_ctx_seq=n_ctx // options.n_seq_max, n_batch=options.n_batch,
        n_ubatch=options.n_ubatch, n_seq_max=options.n_seq_max, kv_bytes_estimate=0,
        max_decode_rows=options.max_decode_rows,
    )
    return SimpleNamespace(description=SimpleNamespace(path="<stub>"), shape=shape)


def digest(**changes: Any) -> bytes:
    options = replace(ModelOptions(n_threads=2), **changes)
    return fingerprint.key_root(backend_for(options), options).digest


def test_every_model_option_is_either_in_the_root_or_excluded_for_a_reason():
    names = {f.name for f in fields(ModelOptions)}
    assert fingerprint.IN_ROOT.isdisjoint(fingerprint.NOT_IN_ROOT)
    unclassified = names - fingerprint.IN_ROOT - set(fingerprint.NOT_IN_ROOT)
    assert not unclassified, f"classify these ModelOptions in models/fingerprint.py: {sorted(unclassified)}"
    assert not (fingerprint.IN_ROOT | set(fingerprint.NOT_IN_ROOT)) - names  # no stale names
    assert all(fingerprint.NOT_IN_ROOT.values())


@pytest.mark.parametrize("change", [
    {"n_seq_max": 4},  # the stream count is written into every non-unified blob
    {"kv_unified": True},
    {"swa_full": False},
    {"type_k": "q8_0"},
    {"type_v": "f32"},
    {"flash_attn": "on"},
    {"flash_attn": "auto"},
    {"n_ctx": 8 * 2048},
    {"n_batch": 1024},
    {"n_ubatch": 256},
    {"prefill_chunk_size": 64},
    {"use_extra_bufts": True},
    {"n_gpu_layers": 99},
    {"n_gpu_layers": -1},
])
def test_options_that_change_bytes_or_numbers_change_the_root(change):
    assert digest(**change) != digest()


@pytest.mark.parametrize("change", [
    {"n_threads": 1},
    {"n_threads_batch": 1},
    {"use_mmap": False},
    {"decode_timeout": 5.0},
    {"chat_template": "{{ messages }}"},
    {"markers": "qwen3"},
    {"split_mode": "row"},  # nothing is offloaded, so device placement cannot matter
    {"main_gpu": 1},
    {"tensor_split": (1.0, 1.0)},
])
def test_options_that_cannot_change_them_leave_the_root_alone(change):
    assert digest(**change) == digest()


def test_device_placement_matters_once_layers_are_offloaded():
    gpu = {"n_gpu_layers": 99}
    assert digest(**gpu, split_mode="row") != digest(**gpu)
    assert digest(**gpu, main_gpu=1) != digest(**gpu)
    assert digest(**gpu, tensor_split=(3.0, 1.0)) != digest(**gpu, tensor_split=(1.0, 3.0))


def test_the_root_describes_what_it_covers():
    options = ModelOptions(n_threads=2)
    root = fingerprint.key_root(backend_for(options), options)
    assert root.n_seq_max == 8 and root.swa_full is True and root.flash_attn == "off"
    numerics = dict(root.numerics)
    assert numerics["n_ubatch"] == 512 and "max_decode_rows" not in numerics
    assert numerics["prefill_chunk"] == 128 and numerics["prefill_align"] == 64
    assert numerics["use_extra_bufts"] is False and numerics["system"] == "stub"
    assert "n_threads" not in root.describe()
