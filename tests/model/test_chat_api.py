"""Engine.chat and the sampling extensions on the real model."""

from __future__ import annotations

import math

MODEL = "gemma"
TURN = [{"role": "system", "content": "You answer in one short sentence."},
        {"role": "user", "content": "What colour is the sky on a clear day?"}]


def test_chat_is_the_rendered_template_with_its_stops(engine):
    chat = engine.chat(MODEL, TURN, max_tokens=24, temperature=0)
    text = engine.apply_chat_template(MODEL, TURN)
    plain = engine.complete(MODEL, text, max_tokens=24, temperature=0, stop=["\nUser:", "\nAssistant:"])
    assert chat.generated_tokens == plain.generated_tokens and chat.reply == plain.reply
    assert "User:" not in chat.reply


def test_logprobs_min_tokens_ignore_eos_and_logit_bias(engine):
    r = engine.complete(MODEL, "The sky is", max_tokens=4, temperature=0, logprobs=2)
    assert len(r.logprobs) == 4
    for entry, token in zip(r.logprobs, r.generated_tokens, strict=True):
        assert entry.token == token == entry.top[0][0]  # greedy: the likeliest token
        assert entry.logprob <= 0 and math.isclose(entry.logprob, entry.top[0][1], abs_tol=1e-6)
        assert entry.bytes == engine.token_pieces(MODEL, [token])[0]
    # The base model never ends by itself; a boosted end token ends it at once, unless
    # min_tokens holds it back (then exactly that many tokens come first).
    (eos,) = engine.tokenize(MODEL, "<eos>", add_special=False)
    boosted = engine.complete(MODEL, "Say OK.", max_tokens=16, temperature=0, logit_bias={eos: 100})
    assert boosted.finish_reason == "stop" and boosted.generated_tokens == ()
    held = engine.complete(MODEL, "Say OK.", max_tokens=16, temperature=0, logit_bias={eos: 100},
                           min_tokens=5)
    assert held.finish_reason == "stop" and len(held.generated_tokens) == 5
    forced = engine.complete(MODEL, "Say OK.", max_tokens=40, temperature=0, ignore_eos=True)
    assert len(forced.generated_tokens) == 40 and forced.finish_reason == "length"
    banned = engine.complete(MODEL, "The sky is", max_tokens=1, temperature=0,
                             logit_bias={r.generated_tokens[0]: -100})
    assert banned.generated_tokens[0] != r.generated_tokens[0]
    assert banned.generated_tokens[0] == r.logprobs[0].top[1][0]  # the runner-up


def test_draft_tokens_and_verify_on_the_real_model(engine):
    tokens = engine.tokenize(MODEL, "one two three four. one two three four. one two")
    draft = engine.draft_tokens(MODEL, tokens, 4)
    assert draft and draft == tokens[tokens.index(tokens[-1]) + 1 :][:4]
    greedy = engine.complete(MODEL, tokens, max_tokens=5, temperature=0).generated_tokens
    assert engine.verify(MODEL, tokens, list(greedy[:4])) == (4, greedy[4])
    accepted, nxt = engine.verify(MODEL, tokens, [greedy[0], greedy[0] + 1])
    assert accepted == 1 and nxt == greedy[1]
