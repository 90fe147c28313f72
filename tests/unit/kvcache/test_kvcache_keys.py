from __future__ import annotations

import json
import struct
from hashlib import blake2b

import pytest

from kvllama.errors import InvalidRequestError
from kvllama.kvcache import InvalidCacheSaltError, KeyChain, key_of, prefix_keys, validate_cache_salt
from kvllama.kvcache import keys as keys_module

TOKENS = list(range(1000, 1200))


def test_same_inputs_give_the_same_key(make_root):
    assert key_of(make_root().digest, TOKENS, 16) == key_of(make_root().digest, list(TOKENS), 16)
    assert len(key_of(make_root().digest, TOKENS, 16)) == 16


@pytest.mark.parametrize(
    "change",
    [
        {"cache_salt": "tenant-a"},
        {"type_k": "q8_0"},
        {"type_v": "q8_0"},
        {"flash_attn": True},
        {"kv_unified": True},
        {"state_version": "llama-cpp-python 0.3.37"},
        {"model_fingerprint": "sha256:ffff"},
        {"adapters": (("style.gguf", 0.5),)},
        {"n_seq_max": 8},  # a non-unified blob embeds one cell list per stream
        {"kv_unified": True, "n_seq_max": 8},
        {"swa_full": True},
        {"flash_attn": "auto"},
        {"numerics": {"n_ubatch": 256}},
        {"numerics": {"use_extra_bufts": True}},
        {"numerics": {"system": "CPU : AVX2 = 1 |"}},
    ],
)
def test_anything_that_changes_the_state_changes_the_key(make_root, change):
    assert key_of(make_root(**change).digest, TOKENS, 16) != key_of(make_root().digest, TOKENS, 16)


def test_adapter_scale_and_salt_values_matter_and_adapter_order_does_not(make_root):
    a = make_root(adapters=(("a", 1.0), ("b", 0.5)))
    assert a.digest == make_root(adapters=(("b", 0.5), ("a", 1.0))).digest
    assert a.digest != make_root(adapters=(("a", 1.0), ("b", 0.25))).digest
    assert make_root(cache_salt="x").digest != make_root(cache_salt="y").digest


def test_n_seq_max_is_hashed_with_and_without_a_unified_kv_cache(make_root):
    # llama.cpp writes n_stream (= n_seq_max when not unified) into every sequence blob and
    # refuses one whose count differs: rows of another n_seq_max must be another root.
    assert make_root(n_seq_max=2).digest != make_root(n_seq_max=8).digest
    assert make_root(kv_unified=True, n_seq_max=2).digest != make_root(kv_unified=True, n_seq_max=8).digest


def test_numerics_are_order_free_hashed_by_value_and_described(make_root):
    a = make_root(numerics={"n_batch": 512, "n_ubatch": 512, "tensor_split": (3.0, 1.0)})
    b = make_root(numerics=[("tensor_split", [3.0, 1.0]), ("n_ubatch", 512), ("n_batch", 512)])
    assert a.digest == b.digest and a.numerics == b.numerics
    assert a.digest != make_root(numerics={"n_batch": 512, "n_ubatch": 512}).digest
    swapped = make_root(numerics={"n_batch": 512, "n_ubatch": 512, "tensor_split": (1.0, 3.0)})
    assert a.digest != swapped.digest
    described = json.loads(a.describe())
    assert described["numerics"] == {"n_batch": 512, "n_ubatch": 512, "tensor_split": "[3.0,1.0]"}
    assert described["format"] == 2 and described["n_seq_max"] == 4 and described["swa_full"] is False
    with pytest.raises(TypeError):
        make_root(numerics={"bad": object()})


def test_one_changed_token_or_length_changes_the_key(root):
    changed = list(TOKENS)
    changed[137] += 1
    assert key_of(root.digest, changed, 16) != key_of(root.digest, TOKENS, 16)
    assert key_of(root.digest, TOKENS[:-1], 16) != key_of(root.digest, TOKENS, 16)
    assert key_of(root.digest, TOKENS, 16) != key_of(root.digest, TOKENS, 32)


def test_key_follows_the_documented_chain(root):
    def h(data: bytes, person: bytes) -> bytes:
        return blake2b(data, digest_size=16, person=person).digest()

    def pack(tokens: list[int]) -> bytes:
        return struct.pack(f"<{len(tokens)}i", *tokens)

    n, block = 37, 16
    chain = h(root.digest, b"kvllama.chain")
    for i in range(n // block):
        chain = h(chain + pack(TOKENS[i * block : (i + 1) * block]), b"kvllama.chain")
    tail = pack(TOKENS[(n // block) * block : n])
    expected = h(chain + tail + n.to_bytes(8, "little"), b"kvllama.key")
    assert key_of(root.digest, TOKENS[:n], block) == expected


def test_one_pass_prefix_keys_equal_direct_keys(root):
    lengths = [1, 15, 16, 17, 64, 100, 199, 200, 250, 0]
    got = prefix_keys(root.digest, TOKENS, lengths, 16)
    assert [n for n, _ in got] == [200, 199, 100, 64, 17, 16, 15, 1]  # longest first, too long dropped
    for n, key in got:
        assert key == key_of(root.digest, TOKENS[:n], 16)


def test_prefix_keys_hash_each_block_once(root, monkeypatch):
    calls = []
    real = keys_module.blake2b

    def counting(*args, **kwargs):
        calls.append(kwargs.get("person"))
        return real(*args, **kwargs)

    monkeypatch.setattr(keys_module, "blake2b", counting)
    chain = KeyChain(root.digest, TOKENS, 16)
    list(chain.keys(range(1, 201)))  # 200 probes
    assert calls.count(b"kvllama.chain") == 1 + 200 // 16  # root + one per full block
    assert calls.count(b"kvllama.key") == 200


def test_keychain_rejects_out_of_range_lengths(root):
    with pytest.raises(ValueError):
        KeyChain(root.digest, TOKENS, 16).key(201)


@pytest.mark.parametrize("salt", ["a", "tenant-42", "org:team.user_1", "x" * 256, None])
def test_valid_salts(salt):
    assert validate_cache_salt(salt) == salt


@pytest.mark.parametrize(
    ("salt", "message"),
    [
        (42, "must be a string"),
        (b"bytes", "must be a string"),
        ("", "1 to 256 characters"),
        ("x" * 257, "1 to 256 characters"),
        ("has space", "may only contain"),
        ("naïve", "may only contain"),
        ("a/b", "may only contain"),
    ],
)
def test_invalid_salts_raise_a_clear_request_error(salt, message, make_root):
    with pytest.raises(InvalidCacheSaltError, match=message) as info:
        validate_cache_salt(salt)
    assert isinstance(info.value, InvalidRequestError)
    assert info.value.code == "invalid_cache_salt"
    with pytest.raises(InvalidCacheSaltError):
        make_root(cache_salt=salt)


def test_description_redacts_the_salt(make_root):
    described = make_root(cache_salt="very-secret-salt").describe()
    assert "very-secret-salt" not in described
    assert '"cache_salt":"blake2b:' in described
    assert '"cache_salt":null' in make_root().describe()
