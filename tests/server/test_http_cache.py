"""Multi-turn conversations over HTTP are served from the KV cache, and both APIs say so."""

from __future__ import annotations

MODEL = "gemma"  # the served name (tests/server/conftest.py)
SYSTEM = "You are a meticulous archivist. " + " ".join(
    f"Rule {i}: keep every record about item {i} precise, short and dated." for i in range(30)
)


def test_openai_second_turn_reports_cached_tokens(oai):
    history = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Name a river."}]
    first = oai.chat.completions.create(model=MODEL, messages=history, max_tokens=8, temperature=0)
    assert first.usage.prompt_tokens > 200
    history += [{"role": "assistant", "content": first.choices[0].message.content},
                {"role": "user", "content": "And a mountain?"}]
    second = oai.chat.completions.create(model=MODEL, messages=history, max_tokens=8, temperature=0)
    cached = second.usage.prompt_tokens_details.cached_tokens
    assert 0 < cached < second.usage.prompt_tokens


def test_anthropic_second_turn_reports_cache_reads(claude):
    messages = [{"role": "user", "content": "Name a city."}]
    first = claude.messages.create(model=MODEL, max_tokens=8, system=SYSTEM + " Anthropic.",
                                   messages=messages)
    messages += [{"role": "assistant", "content": first.content[0].text or "Paris"},
                 {"role": "user", "content": "And a country?"}]
    second = claude.messages.create(model=MODEL, max_tokens=8, system=SYSTEM + " Anthropic.",
                                    messages=messages)
    assert second.usage.cache_read_input_tokens > 0
    assert second.usage.input_tokens + second.usage.cache_read_input_tokens > 200
