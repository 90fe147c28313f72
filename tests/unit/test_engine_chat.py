"""Engine.chat and friends on the stub backend: the template, its stops, the same results as complete."""

from __future__ import annotations

import asyncio

from kvllama.kvcache import CacheConfig
from kvllama.request import ChatInput, GenerationRequest

MESSAGES = [{"role": "system", "content": "Be brief. " * 20}, {"role": "user", "content": "Hi there"}]


def test_chat_equals_complete_on_the_rendered_prompt_with_the_templates_stops(stub_engine):
    engine, _ = stub_engine()
    text = engine.apply_chat_template("s", MESSAGES)
    assert text.endswith("Assistant:")  # the stub has no template: the plain fallback
    chat = engine.chat("s", MESSAGES, max_tokens=6, temperature=0)
    plain = engine.complete("s", text, max_tokens=6, temperature=0, stop=["\nUser:", "\nAssistant:"])
    assert chat.reply == plain.reply and chat.generated_tokens == plain.generated_tokens


def _resolved(engine, template=None, **params):
    chat = ChatInput.of(MESSAGES, template=template)
    return engine.resolve_request("s", GenerationRequest.build(chat=chat, **params))


def test_chat_keeps_the_callers_stops_first_and_a_named_template_has_none(stub_engine):
    engine, _ = stub_engine()
    assert _resolved(engine, stop="zz").sampling.stop == ("zz", "\nUser:", "\nAssistant:")
    assert _resolved(engine, stop=["\nUser:"]).sampling.stop == ("\nUser:", "\nAssistant:")
    chatml = _resolved(engine, "chatml")
    assert chatml.sampling.stop == ()
    assert engine.detokenize("s", chatml.prompt).startswith("<|im_start|>system")


def test_chat_streams_and_async_forms_agree(stub_engine):
    engine, _ = stub_engine()
    whole = engine.chat("s", MESSAGES, max_tokens=5, temperature=0)
    streamed = "".join(e.text for e in engine.infer_chat("s", MESSAGES, max_tokens=5, temperature=0)
                       if e.type == "text")

    async def run():
        a = await engine.achat("s", MESSAGES, max_tokens=5, temperature=0)
        parts = [e.text async for e in engine.ainfer_chat("s", MESSAGES, max_tokens=5, temperature=0)
                 if e.type == "text"]
        return a.reply, "".join(parts)

    assert (whole.reply, whole.reply) == asyncio.run(run()) and streamed == whole.reply


def test_chat_with_a_cache_saves_the_system_prompts_end(stub_engine):
    engine, _ = stub_engine(n_ctx_seq=1024, cache=CacheConfig(shm_dir=None, disk_dir=None),
                            load={"keep_finished": False})
    long = [{"role": "system", "content": "Rules. " * 60}, {"role": "user", "content": "Q" * 120}]
    engine.chat("s", long, max_tokens=2, temperature=0)
    assert engine.cache.flush(10)
    assert engine.cache_metrics()["saves"]["prefix"] == 1
    other = [long[0], {"role": "user", "content": "R" * 120}]
    assert engine.chat("s", other, max_tokens=2, temperature=0).cache_delta.read >= 384
