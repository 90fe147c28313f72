"""Loading and unloading a real model again and again leaks no memory.

Measured as the process's anonymous memory (``RssAnon`` in /proc/self/status:
the heap and llama.cpp's buffers, not the memory-mapped weights, which the
page cache may keep or drop as it likes). A single reading swings by a few
MiB from cycle to cycle (malloc's arenas, threads coming and going: measured
58-62 MiB under pytest with no trend), so the level after the first cycles
(the highest of the first five) is compared with the level after fifty (the
median of the last ten): they must agree within 5 %. A leak of 100 KB per
cycle would already break that.
"""

from __future__ import annotations

import gc
import logging
import statistics
from pathlib import Path

import pytest

import kvllama

pytestmark = pytest.mark.slow

CYCLES = 50


def rss_anon() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) * 1024
    pytest.fail("/proc/self/status has no RssAnon line (not Linux?)")


def test_fifty_load_unload_cycles_leave_anonymous_memory_where_the_first_left_it(monkeypatch):
    # llama.cpp logs a few warnings per load; pytest keeps every captured record, which would
    # grow the heap by itself.
    monkeypatch.setattr(logging.getLogger("kvllama.llama_cpp"), "disabled", True)
    with kvllama.Engine(cache=None) as engine:
        engine.register_model("m", None, n_seq_max=1, n_ctx=512, n_threads=1)
        after: list[int] = []
        for _ in range(CYCLES):
            result = engine.complete("m", "The capital of France is", max_tokens=2, temperature=0)
            assert result.generated_tokens
            engine.unload_model("m")
            assert engine.list_models() == []
            gc.collect()
            after.append(rss_anon())
    first, last = max(after[:5]), statistics.median(after[-10:])
    assert last <= 1.05 * first, f"RssAnon per cycle (MiB): {[a >> 20 for a in after]}"
