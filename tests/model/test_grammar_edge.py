"""The GBNF checker against the real llama.cpp: never stricter on real grammars, same verdict on bad ones.

Only grammars the checker accepts, or refuses for plain syntax, are handed to
llama.cpp here: the ones it refuses for safety ({2,1}, NUL literals...) are
exactly those that abort or exhaust the process.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings

from kvllama.errors import GrammarError
from kvllama.gbnf import check_grammar
from kvllama.models.default import default_model_path
from kvllama.native.library import llama

if str(Path(__file__).parents[1] / "unit") not in sys.path:
    sys.path.insert(0, str(Path(__file__).parents[1] / "unit"))

from gbnf_corpus import VALID, plausible_grammars, schema_grammars

Accepts = Callable[[str], bool]


@pytest.fixture(scope="module")
def llama_accepts() -> Iterator[Accepts]:
    """Whether llama_sampler_init_grammar builds a sampler for a grammar (vocabulary-only model load)."""
    lib = llama()
    params = lib.llama_model_default_params()
    params.vocab_only = True
    model = lib.llama_model_load_from_file(str(default_model_path()).encode(), params)
    assert model, "could not load the default model's vocabulary"
    vocab = lib.llama_model_get_vocab(model)

    def accepts(text: str) -> bool:
        sampler = lib.llama_sampler_init_grammar(vocab, text.encode("utf-8"), b"root")
        if not sampler:
            return False
        lib.llama_sampler_free(sampler)
        return True

    yield accepts
    lib.llama_model_free(model)


CORPUS = {**VALID, **schema_grammars()}


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_every_grammar_the_checker_accepts_llama_cpp_accepts(llama_accepts, name):
    check_grammar(CORPUS[name])
    started = time.perf_counter()
    assert llama_accepts(CORPUS[name])
    assert time.perf_counter() - started < 5.0


@settings(max_examples=150, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(plausible_grammars())
def test_random_grammars_the_checker_accepts_llama_cpp_accepts(llama_accepts, text):
    try:
        check_grammar(text)
    except GrammarError:
        return
    assert llama_accepts(text), text


# Refused by both (safe to hand to llama.cpp: it reports these as parse errors).
BOTH_REFUSE = [
    "root ::= missing",
    'a ::= "x"',
    'root ::= "unterminated',
    "root ::= [abc",
    'root ::= ("a"',
    'root ::= "a")',
    'root = "a"',
    'root ::= *"a"',
    'root ::= "a"{',
    'root ::= "a"{1',
    'root ::= "\\q"',
    'root ::= "\\x4"',
    'root ::= "a"\n  | "b"',
    'root ::= root "a" | "b"',
    'root ::= ("")*',
    'root ::= "a"?*',
    'root ::= ("x"{0,100}){100}',
    'root ::= "x"{2001}',
]


@pytest.mark.parametrize("grammar", BOTH_REFUSE)
def test_syntax_errors_are_refused_by_both(llama_accepts, grammar):
    with pytest.raises(GrammarError):
        check_grammar(grammar)
    assert not llama_accepts(grammar)
