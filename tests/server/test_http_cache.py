"""Multi-turn conversations over HTTP are served from the KV cache, and both APIs say so."""

from __future__ import annotations

import pytest

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


# --- shared prefixes: save points the server derives, and Anthropic cache_control ---------------

NOKEEP = "gemma-cache-only"  # finished requests leave their slots: every reuse is the cache's


@pytest.fixture(scope="module")
def cache_only_model(served):
    served.engine.load_model(NOKEEP, n_seq_max=2, n_ctx=4096, n_threads=1, keep_finished=False)
    yield NOKEEP
    served.engine.forget_model(NOKEEP)


def _document(tag: str) -> str:
    # ~700 tokens: above the 512-token sliding window, where a longer row cannot be cut back.
    clauses = (f"Clause {i}: item {i} ships on day {i % 28 + 1}." for i in range(60))
    return f"Document {tag}. " + " ".join(clauses)


def _ask(claude, model: str, doc: str, question: str, marked: bool):
    # A long question: the request's own rows (64-token grid, 8-token tail) end past the document.
    question = " ".join([question] * 10)
    block = {"type": "text", "text": doc}
    if marked:
        block["cache_control"] = {"type": "ephemeral"}
    return claude.messages.create(model=model, max_tokens=4, messages=[
        {"role": "user", "content": [block, {"type": "text", "text": question}]}])


def test_anthropic_cache_control_breakpoint_creates_a_row_another_question_reads(claude, cache_only_model):
    # Without a breakpoint nothing in one user message marks where the document ends:
    # the second question reads nothing (the first row is longer and cannot be cut back).
    doc = _document("plain")
    _ask(claude, cache_only_model, doc, "Which day ships item 3?", marked=False)
    unmarked = _ask(claude, cache_only_model, doc, "Which day ships item 40?", marked=False)
    assert unmarked.usage.cache_read_input_tokens == 0
    doc = _document("marked")
    first = _ask(claude, cache_only_model, doc, "Which day ships item 3?", marked=True)
    assert first.usage.cache_creation_input_tokens > 0 and first.usage.cache_read_input_tokens == 0
    second = _ask(claude, cache_only_model, doc, "Which day ships item 40?", marked=True)
    u = second.usage
    assert u.cache_read_input_tokens >= 640  # the document, on the 64-token grid
    assert u.input_tokens + u.cache_read_input_tokens + u.cache_creation_input_tokens > 700


def test_openai_users_sharing_a_system_prompt_read_it_from_the_first_users_row(oai, cache_only_model):
    system = _document("system")
    def ask(q: str):
        return oai.chat.completions.create(model=cache_only_model, max_tokens=4, temperature=0, messages=[
            {"role": "system", "content": system}, {"role": "user", "content": q}])
    first = ask("Which day ships item 3? " * 8)
    second = ask("Which day ships item 40? " * 8)
    assert first.usage.prompt_tokens_details.cached_tokens == 0
    assert second.usage.prompt_tokens_details.cached_tokens >= 640


def test_streamed_completion_reports_cached_tokens(oai):
    prompt = _document("completion")
    oai.completions.create(model=MODEL, prompt=prompt, max_tokens=2, temperature=0)
    chunks = list(oai.completions.create(model=MODEL, prompt=prompt + " Again.", max_tokens=2,
                                         temperature=0, stream=True, stream_options={"include_usage": True}))
    usage = chunks[-1].usage
    assert usage is not None and usage.prompt_tokens > 700
    assert usage.prompt_tokens_details.cached_tokens == usage.prompt_tokens - 8  # kept in its slot
