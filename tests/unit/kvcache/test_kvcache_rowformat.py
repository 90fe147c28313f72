from __future__ import annotations

import time

import pytest

from kvllama.kvcache import SaveReason, key_of
from kvllama.kvcache.errors import CorruptRowError
from kvllama.kvcache.keys import token_array
from kvllama.kvcache.rowformat import (
    BODY_OFFSET,
    MAGIC,
    STATS_OFFSET,
    Row,
    RowMeta,
    pack,
    pack_stats,
    unpack,
)


@pytest.fixture
def row(root, blob) -> Row:
    tokens = token_array(range(7, 57))
    now = time.time()
    meta = RowMeta(key_of(root.digest, tokens, 16), root.digest, tokens, SaveReason.FINISH, 16, now - 5,
                   3, now, root.describe(), 3000)
    return Row(meta, blob(1, 3000))


def test_round_trip(row):
    data = pack(row)
    assert len(data) == row.size
    back = unpack(data)
    assert back.meta == row.meta
    assert back.blob == row.blob


def test_header_layout(row):
    data = pack(row)
    assert data[:4] == MAGIC
    assert (STATS_OFFSET, BODY_OFFSET) == (72, 96)
    assert int.from_bytes(data[4:6], "little") == 1  # format version
    assert data[6] == SaveReason.FINISH
    assert int.from_bytes(data[12:16], "little") == 50  # n_tokens
    assert data[36:52] == row.key


@pytest.mark.parametrize("where", ["magic", "header", "tokens", "inputs", "blob", "trailer"])
def test_a_single_flipped_byte_is_rejected(row, where):
    data = bytearray(pack(row))
    offsets = {"magic": 0, "header": 30, "tokens": BODY_OFFSET + 9, "inputs": BODY_OFFSET + 200 + 3,
               "blob": len(data) - 100, "trailer": len(data) - 1}
    data[offsets[where]] ^= 0x01
    with pytest.raises(CorruptRowError):
        unpack(bytes(data))


@pytest.mark.parametrize("cut", [1, 4, 1000, 3100, 3300])
def test_a_truncated_row_is_rejected(row, cut):
    with pytest.raises(CorruptRowError):
        unpack(pack(row)[:-cut])


def test_stats_update_in_place_without_touching_the_checksum(row):
    data = bytearray(pack(row))
    data[STATS_OFFSET:BODY_OFFSET] = pack_stats(41, 1234.5)
    back = unpack(bytes(data))
    assert (back.meta.hits, back.meta.last_used) == (41, 1234.5)
    assert back.blob == row.blob


def test_a_torn_stats_block_only_resets_popularity(row):
    data = bytearray(pack(row))
    data[STATS_OFFSET + 2] ^= 0xFF
    back = unpack(bytes(data))
    assert back.meta.hits == 0
    assert back.meta.last_used == row.meta.created
    assert back.blob == row.blob


def test_save_reasons_parse_from_names():
    assert SaveReason.parse("continued") is SaveReason.CONTINUED
    assert SaveReason.parse(SaveReason.SHUTDOWN) is SaveReason.SHUTDOWN
    assert [r.label for r in SaveReason] == ["cold", "continued", "finish", "evict", "shutdown", "prefix"]
    with pytest.raises(ValueError, match="unknown save reason"):
        SaveReason.parse("later")
