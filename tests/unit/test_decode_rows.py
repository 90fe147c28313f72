"""The decode-row cap follows where llama.cpp's CPU kernel switch can reach a model."""

from __future__ import annotations

import pytest

from kvllama.backend import decode_rows
from kvllama.backend.decode_rows import default_max_decode_rows, uses_pass_kernels
from kvllama.native import kernels
from kvllama.native.gguf import GgufInfo

Q4_K, Q6_K, Q8_0, F16 = 12, 14, 8, 1


def info(*types: int) -> GgufInfo:
    return GgufInfo(path="m.gguf", version=3, size_bytes=0, metadata={}, n_tensors=len(types),
                    tensor_types=frozenset(types))


@pytest.fixture(autouse=True)
def stock_kernels(monkeypatch: pytest.MonkeyPatch) -> None:
    """Stock settings on a stock build (no per-pass switch), whatever this machine installed."""
    monkeypatch.delenv("GGML_CPU_TILED_MM", raising=False)
    monkeypatch.delenv("GGML_CPU_TILED_MM_FORCE", raising=False)
    monkeypatch.setattr(decode_rows, "pass_kernels", lambda: kernels.PassKernels(None))


def patched_build(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Pretend the installed llama.cpp has the per-pass switch; the modes it was set to."""
    modes: list[int] = []
    monkeypatch.setattr(decode_rows, "pass_kernels", lambda: kernels.PassKernels(modes.append))
    return modes


def test_k_quant_weights_on_the_cpu_are_capped_at_seven_rows():
    assert default_max_decode_rows(info(Q8_0, Q4_K, Q6_K), n_gpu_layers=0, n_layer=18) == 7


def test_no_cap_without_tiled_types_or_with_every_layer_offloaded():
    assert default_max_decode_rows(info(F16, Q8_0), n_gpu_layers=0, n_layer=18) == 0
    assert default_max_decode_rows(info(Q4_K), n_gpu_layers=-1, n_layer=18) == 0
    assert default_max_decode_rows(info(Q4_K), n_gpu_layers=99, n_layer=18) == 0
    assert default_max_decode_rows(info(Q4_K), n_gpu_layers=9, n_layer=18) == 7  # half on the CPU


@pytest.mark.parametrize(("name", "value", "mode"), [
    ("GGML_CPU_TILED_MM", "0", kernels.OFF),
    ("GGML_CPU_TILED_MM", "1", kernels.STOCK),
    ("GGML_CPU_TILED_MM_FORCE", "1", kernels.FORCED),
    ("GGML_CPU_TILED_MM_FORCE", "0", kernels.STOCK),
])
def test_one_kernel_for_every_batch_size_lifts_the_cap(monkeypatch, name, value, mode):
    monkeypatch.setenv(name, value)
    assert kernels.cpu_kernel_mode() == mode
    expected = 7 if mode == kernels.STOCK else 0
    assert default_max_decode_rows(info(Q4_K), n_gpu_layers=0, n_layer=18) == expected


def test_the_patched_build_lifts_the_cap_where_the_switch_reaches_the_model(monkeypatch):
    patched_build(monkeypatch)
    assert uses_pass_kernels(info(Q4_K), n_gpu_layers=0, n_layer=18)
    assert default_max_decode_rows(info(Q8_0, Q4_K, Q6_K), n_gpu_layers=0, n_layer=18) == 0
    # Without tiled weights too: the decode class also keeps attention one way for verify passes.
    assert uses_pass_kernels(info(F16, Q8_0), n_gpu_layers=0, n_layer=18)
    # No CPU layers: nothing to switch.
    assert not uses_pass_kernels(info(Q4_K), n_gpu_layers=-1, n_layer=18)
    # One kernel for every size from the process start: the switch is not used either.
    monkeypatch.setenv("GGML_CPU_TILED_MM", "0")
    assert not uses_pass_kernels(info(Q4_K), n_gpu_layers=0, n_layer=18)
    assert default_max_decode_rows(info(Q4_K), n_gpu_layers=0, n_layer=18) == 0


def test_pass_kernels_forwards_the_mode_and_a_stock_build_ignores_it():
    modes: list[int] = []
    kernels.PassKernels(modes.append).set(kernels.THREAD_OFF)
    assert modes == [kernels.THREAD_OFF]
    stock = kernels.PassKernels(None)
    stock.set(kernels.THREAD_OFF)  # no setter: nothing to call, no error
    assert not stock.available
