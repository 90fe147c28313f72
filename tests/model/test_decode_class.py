"""The patched build's decode class on the real model (docs/kernel-patch.md).

Decode passes of any size compute a row as a lone step does, so 8+ streams run
in one pass with the tokens each gets alone; a verify pass (several rows of one
sequence) does too, so speculation on the default engine and ``Engine.verify``
answer exactly as plain greedy decoding.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

import kvllama
from kvllama.bench.spec import copy_prompt

pytestmark = pytest.mark.slow

M = "dc"


@pytest.fixture(scope="module")
def wide() -> Iterator[kvllama.Engine]:
    with kvllama.Engine(cache=None) as eng:
        eng.load_model(M, n_seq_max=16, n_ctx=16 * 1024, n_threads=2)
        yield eng


def test_setup_builds_the_patched_llama_cpp(wide):
    # `make setup` applies scripts/patches/: decode passes need no row cap.
    context = wide.model_info(M).context
    assert context["per_pass_kernels"] is True and context["max_decode_rows"] == 0


def test_twelve_streams_in_one_pass_equal_each_stream_alone(wide):
    places = ("canal", "mill", "quarry", "beacon")
    prompts = [f"Note {i}: the {places[i % 4]} near the town was" for i in range(12)]
    params = [{"max_tokens": 16, "temperature": 0} if i % 2 == 0 else
              {"max_tokens": 16, "temperature": 0.9, "seed": 40 + i} for i in range(12)]
    alone = [wide.complete(M, p, **kw).generated_tokens for p, kw in zip(prompts, params, strict=True)]
    together = wide.infer_many(M, prompts[:1], **params[0])  # one stream decoding first
    others = [wide.infer(M, prompts[i], **params[i]) for i in range(1, 12)]
    got = [together[0].result().generated_tokens, *(s.result().generated_tokens for s in others)]
    assert got == alone


def test_speculation_on_the_default_engine_gives_the_plain_tokens():
    prompt = copy_prompt(3)
    with kvllama.Engine(cache=None) as eng:
        eng.load_model("plain", n_threads=2)
        eng.load_model("spec", n_threads=2, speculative_draft=8)
        plain = eng.complete("plain", prompt, max_tokens=48, temperature=0)
        spec = eng.complete("spec", prompt, max_tokens=48, temperature=0)
    assert spec.generated_tokens == plain.generated_tokens
    assert spec.stats.accepted_tokens > 0


def test_verify_answers_as_greedy_decoding_does(wide):
    prefix = wide.tokenize(M, copy_prompt(2))
    greedy = wide.complete(M, prefix, max_tokens=9, temperature=0).generated_tokens
    assert len(greedy) == 9
    assert wide.verify(M, prefix, list(greedy[:8])) == (8, greedy[8])
    assert wide.verify(M, prefix, list(greedy[:8])) == (8, greedy[8])  # the one-pass path
    wrong = [*greedy[:3], (greedy[3] + 1) % 1000 + 1000, *greedy[4:8]]
    assert wide.verify(M, prefix, wrong) == (3, greedy[3])
