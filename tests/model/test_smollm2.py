"""SmolLM2-135M-Instruct, the second architecture (llama, ChatML template in its GGUF, no window).

Its chat template comes from the GGUF, so a chat turn must be what
llama-cpp-python's own ``create_chat_completion`` answers on the same file,
greedy; and a grammar built from a JSON schema must constrain a llama
vocabulary as it does Gemma's. The exactness checks that run on both models
are in test_resume_exact.py (parametrized by model) and test_live_sources.py.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from llama_cpp import Llama

import kvllama
from kvllama.models.smollm2 import smollm2_model_path
from kvllama.server.grammar import json_schema_grammar

M = "smollm2"
CONVERSATIONS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "system", "content": "You are a helpful assistant."},
     {"role": "user", "content": "Name three colours."}],
    [{"role": "user", "content": "Hi! Who are you?"}, {"role": "assistant", "content": "I am a small model."},
     {"role": "user", "content": "What can you do?"}],
]


@pytest.fixture(scope="module")
def engine() -> Iterator[kvllama.Engine]:
    with kvllama.Engine(cache=None) as eng:
        eng.load_model(M, smollm2_model_path(), n_seq_max=2, n_ctx=4096, n_threads=2)
        yield eng


@pytest.fixture(scope="module")
def reference() -> Iterator[Llama]:
    llm = Llama(model_path=smollm2_model_path(), n_ctx=2048, n_threads=2, verbose=False)
    yield llm
    llm.close()


@pytest.mark.parametrize("messages", CONVERSATIONS, ids=["question", "system", "multi-turn"])
def test_a_chat_turn_equals_llama_cpp_pythons_chat_completion(engine, reference, messages):
    assert engine.model_info(M).chat_template_source == "gguf"
    ours = engine.chat(M, messages, max_tokens=24, temperature=0)
    theirs = reference.create_chat_completion(messages=messages, max_tokens=24, temperature=0)
    assert ours.reply == theirs["choices"][0]["message"]["content"]
    assert ours.reply  # a real answer, not an empty turn


def test_a_json_schema_grammar_constrains_the_llama_vocabulary(engine):
    schema = {"type": "object", "properties": {"city": {"type": "string"}, "rank": {"type": "integer"}},
              "required": ["city", "rank"]}
    r = engine.chat(M, [{"role": "user", "content": "Give the largest city of France as JSON."}],
                    max_tokens=48, temperature=0, grammar=json_schema_grammar(schema))
    answer = json.loads(r.reply)
    assert set(answer) == {"city", "rank"} and isinstance(answer["rank"], int)
