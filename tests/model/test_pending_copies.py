"""Queued sequence copies are applied before state is read, with no spare sequence in the context.

llama.cpp (non-unified KV) only queues a cross-stream copy until the next
``llama_decode``. kvllama's context has exactly ``n_seq_max`` streams, so the
flush pass goes into an empty sequence when there is one, else after the
copy's destination (and is cut off again). Either way the copy must then read,
and decode on, exactly like its source. Real llama.cpp, on the tiny model.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest

from kvllama.bench.tiny_model import tiny_model_path
from kvllama.native.batch import NativeBatch
from kvllama.native.context import NativeContext
from kvllama.native.library import llama
from kvllama.native.model import NativeModel
from kvllama.options import ModelOptions

OPTIONS = ModelOptions.from_kwargs(n_seq_max=2, n_threads=1, decode_timeout=0.0)
PROMPT = [2] + [300 + (i * 37) % 4000 for i in range(69)]


@pytest.fixture(scope="module")
def model() -> Iterator[NativeModel]:
    with NativeModel(str(tiny_model_path()), OPTIONS) as m:
        yield m


@pytest.fixture
def ctx(model: NativeModel) -> Iterator[tuple[NativeContext, NativeBatch]]:
    with NativeContext(model, OPTIONS, 2 * 1024, n_seq=2) as c:
        batch = NativeBatch(c.n_batch)
        batch.fill([(t, i, 0, False) for i, t in enumerate(PROMPT)])
        c.decode(batch)
        yield c, batch
        batch.close()


def _next_logits(ctx: NativeContext, batch: NativeBatch, seq: int) -> np.ndarray:
    batch.fill([(42, len(PROMPT), seq, True)])
    ctx.decode(batch)
    row = llama().llama_get_logits_ith(ctx.handle, 0)
    return np.ctypeslib.as_array(row, shape=(262_144,)).copy()


def test_a_copy_into_the_last_free_id_is_flushed_after_its_destination(ctx) -> None:
    c, batch = ctx
    c.copy_sequence(0, 1)  # every id now holds tokens: no empty sequence for the flush pass
    assert c.copies_pending
    c.apply_pending_copies(NativeBatch(1), token=0)
    assert not c.copies_pending
    assert c.seq_pos_max(1) == len(PROMPT) - 1  # the flush token was cut off again
    assert len(c.state_seq_get(1)) == len(c.state_seq_get(0))
    source = _next_logits(c, batch, 0)
    copy = _next_logits(c, batch, 1)
    assert np.array_equal(source, copy)


def test_a_move_is_flushed_through_the_id_it_left(ctx) -> None:
    c, batch = ctx
    before = _next_logits(c, batch, 0)
    c.clear_sequence(0, len(PROMPT))
    blob = c.state_seq_get(0)
    c.move_sequence(0, 1)
    c.apply_pending_copies(NativeBatch(1), token=0)
    assert c.seq_pos_max(0) == -1 and c.seq_pos_max(1) == len(PROMPT) - 1
    assert len(c.state_seq_get(1)) == len(blob)
    assert np.array_equal(_next_logits(c, batch, 1), before)
