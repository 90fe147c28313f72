"""The GBNF checker (kvllama.gbnf): every refusal, and what it must let through.

That llama.cpp itself parses everything accepted here is checked against the
real library in tests/model/test_grammar_edge.py (same corpus).
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings

from kvllama import gbnf
from kvllama.errors import GrammarError, InvalidRequestError, InvalidSamplingError
from kvllama.gbnf import MAX_GRAMMAR_BYTES, MAX_GRAMMAR_ELEMENTS, MAX_REPETITION, check_grammar
from kvllama.sampling import SamplingParams

# Helper modules import by name: pytest's importlib mode does not put test folders on sys.path.
if str(Path(__file__).parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).parent))

from gbnf_corpus import VALID, gbnf_texts, schema_grammars

# Work, counted instead of timed (a loaded CI machine cannot fail a count): Python calls
# the checker makes. Measured: a grammar at the element budget takes ~50,000, the largest
# text ~110,000; an exponential blow-up (a left-recursion check without its budget, say)
# would take millions.
MAX_CALLS = 1_000_000
MAX_CALLS_REFUSED = 100_000


def checker_calls(text: object) -> int:
    """Python function calls ``check_grammar(text)`` makes (its result cache cleared first)."""
    calls = 0

    def count(_frame: object, event: str, _arg: object) -> None:
        nonlocal calls
        if event == "call":
            calls += 1

    gbnf._check.cache_clear()
    sys.setprofile(count)
    try:
        with contextlib.suppress(GrammarError):
            check_grammar(text)
    finally:
        sys.setprofile(None)
    return calls

REFUSED = [
    # (grammar, fragment of the message)
    ('root ::= "\ud800"', "lone surrogate U+D800 at line 1, column 11"),
    ('root ::= [\udc00-z]', "lone surrogate U+DC00"),
    ('root ::= "a"\n# \udfff in a comment\n', "line 2, column 3"),
    ('root ::= "\\uD800"', "is a lone surrogate"),
    ('root ::= [a-\\uDFFF]', "is a lone surrogate"),
    ('root ::= "\\U00110000"', "not a Unicode code point"),
    ('root ::= "\x00"', "NUL character at line 1, column 11"),
    ('root ::= "\\x00"', "contains \\x00 (NUL)"),
    ('root ::= "a" "b\\u0000c"', "contains \\x00 (NUL)"),
    ("root ::= [\\x00]", "matches no character but NUL"),
    ("root ::= [\\x00-\\x00]", "matches no character but NUL"),
    ("root ::= [z-a]", "matches no character"),
    ("root ::= [^\\x00-\\U0010FFFF]", "matches no character"),
    ("root ::= [^\\x01-\\x7F\\x80-\\U0010FFFF]", "matches no character"),
    ("root ::= []", "empty character class"),
    ("root ::= [^]", "empty character class"),
    ('root ::= "a"{2,1}', "{2,1} has its minimum above its maximum"),
    ("root ::= [a-z]{5,2}", "minimum above its maximum"),
    ('root ::= "a"{0,100000000}', f"over the limit of {MAX_REPETITION}"),
    ('root ::= "a"{100000000}', "over the limit"),
    ('root ::= "a"{2001}', "over the limit"),
    ('root ::= "a"{0,2001}', "over the limit"),
    ('root ::= "a"{' + "9" * 5000 + "}", "too long"),
    ('root ::= "x"{1000}{1000}', "multiply to more than"),
    ('root ::= ("x"{0,100}){100}', "multiply to more than"),
    ('root ::= "' + "a" * 200 + '"{2000}', f"more than {MAX_GRAMMAR_ELEMENTS} elements"),
    ("root ::= " + " ".join(f"r{i}" for i in range(70)) + "\n"
     + "".join(f"r{i} ::= [a-z]{{0,2000}}\n" for i in range(70)), "elements"),
    ("root ::= " + "(" * 65 + '"a"' + ")" * 65, "nested more than 64 deep"),
    ("root ::= " + "(" * 30_000 + '"a"' + ")" * 30_000, "nested more than"),
    ("x" * (MAX_GRAMMAR_BYTES + 1), f"at most {MAX_GRAMMAR_BYTES}"),
    ('root ::= "' + "é" * (MAX_GRAMMAR_BYTES // 2) + '"', "bytes of UTF-8"),
    ("root ::= missing", "rule 'missing' is used but never defined"),
    ('a ::= "x"', "no 'root' rule"),
    ("", "empty"),
    ("   \n# only a comment\n", "no rules"),
    ('root ::= "a"\nroot ::= "b"', "defined twice"),
    ('root ::= root "a" | "b"', "left-recursive"),
    ('root ::= a\na ::= b "x"\nb ::= "" | a', "left-recursive"),
    ('root ::= ("")*', "left-recursive"),
    ('root ::= "a"?*', "left-recursive"),
    ("root ::= r1\n" + "".join(f"r{i} ::= r{i + 1} | r{i + 1}\n" for i in range(1, 40)) + 'r40 ::= "z"',
     "left-recursion check would take more than"),
    ("root ::= r1\n" + "".join(f'r{i} ::= r{i + 1} "a" | r{i + 1} "b"\n' for i in range(1, 16))
     + 'r16 ::= "z"', "can begin in 65536 different ways"),
    # Left recursion llama.cpp misses (e is not "empty" to it, but f is): its stacks grow until OOM.
    ('root ::= e root "x" | "z"\ne ::= f\nf ::= "" | "y"', "grow its parse stacks until memory runs out"),
    # The same doubling behind a nullable group, which llama.cpp's own check does not follow.
    ('root ::= "x" r1\n' + "".join(f'r{i} ::= ("a"?) r{i + 1} "a" | ("b"?) r{i + 1} "b"\n'
                                    for i in range(1, 16)) + 'r16 ::= "z"', "different ways"),
    ('root ::= "unterminated', "unterminated string literal"),
    ("root ::= [abc", "unterminated character class"),
    ('root ::= ("a"', "expecting ')'"),
    ('root ::= "a")', "expecting a newline or the end"),
    ('root = "a"', "expecting '::='"),
    ('root ::= "a"\n  | "b"', "expecting a rule name"),
    ('root ::= *"a"', "no item before it to repeat"),
    ('root ::= ""*', "no item before it to repeat"),
    ('root ::= "a"{', "expecting an integer"),
    ('root ::= "a"{,2}', "expecting an integer"),
    ('root ::= "a"{1', "expecting ',' or '}'"),
    ('root ::= "a"{1,2', "expecting '}'"),
    ('root ::= "\\q"', "unknown escape"),
    ('root ::= "\\x4"', "expecting 2 hex digits"),
    ('root ::= "\\u12G4"', "expecting 4 hex digits"),
    ('root ::= "a\\', "unknown escape"),
    ("root ::= <[12", "expecting ']>'"),
    ("root ::= <[99999999999]>", "too big"),
    ("root ::= !x", "expecting '<'"),
    ("root ::= <abc", "unterminated token reference"),
]


@pytest.mark.parametrize(("grammar", "fragment"), REFUSED, ids=[f"r{i}" for i in range(len(REFUSED))])
def test_refused_grammars_name_the_problem(grammar, fragment):
    with pytest.raises(GrammarError) as info:
        check_grammar(grammar)
    assert fragment in str(info.value), str(info.value)
    assert isinstance(info.value, InvalidRequestError)  # an HTTP 400
    assert checker_calls(grammar) < MAX_CALLS_REFUSED


def test_errors_name_the_rule_and_position():
    with pytest.raises(GrammarError) as info:
        check_grammar('root ::= item\nitem ::= "a" "b"{3,2}\n')
    message = str(info.value)
    assert "line 2, column 17" in message and "(rule 'item')" in message


def test_token_ids_are_checked_against_the_vocabulary_when_known():
    check_grammar("root ::= <[5]>", n_vocab=10)
    check_grammar("root ::= !<[50]>", n_vocab=10)  # "any token but 50" still allows every token
    with pytest.raises(GrammarError, match="not in the vocabulary"):
        check_grammar("root ::= <[10]>", n_vocab=10)


def test_non_strings_are_refused():
    for value in (None, 5, b'root ::= "a"', ["root ::= x"]):
        with pytest.raises(GrammarError, match="must be a string"):
            check_grammar(value)


CORPUS = {**VALID, **schema_grammars()}


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_valid_grammars_pass(name):
    summary = check_grammar(CORPUS[name])
    assert summary.rules >= 1 and summary.elements >= 2


def test_summary_counts_what_llama_cpp_builds():
    # [a-z]{0,3}: llama.cpp unrolls it into three helper rules "[a-z] next |" (the innermost
    # without "next"). The budget counts every element created, a little over what is kept:
    # the class (2, removed again for a minimum of 0), 3 helper rules at 5, root's END.
    s = check_grammar("root ::= [a-z]{0,3}")
    assert s.rules == 4
    assert s.elements == 2 + 3 * 5 + 1
    assert check_grammar('root ::= "a" | "b" | "c"').start_paths == 1
    assert check_grammar('root ::= x | y\nx ::= "a" | "b"\ny ::= x "c"').start_paths == 4


def test_worst_case_inputs_stay_cheap():
    worst = [
        # At the element budget: as many full-size repetitions as the budget allows.
        "root ::= " + " ".join(f"r{i}" for i in range(30)) + "\n"
        + "".join(f"r{i} ::= [a-z]{{0,2000}}\n" for i in range(30)),
        # The largest text, all of it one wide alternation.
        "root ::= " + " | ".join(['"a"'] * ((MAX_GRAMMAR_BYTES - 20) // 6)),
        # A long chain of rules.
        "root ::= r0\n" + "".join(f'r{i} ::= "a" r{i + 1} | "b"\n' for i in range(3000)) + 'r3000 ::= "."\n',
    ]
    for grammar in worst:
        assert checker_calls(grammar) < MAX_CALLS


@settings(max_examples=200, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(gbnf_texts())
def test_random_grammar_text_only_ever_raises_grammar_errors(text):
    with contextlib.suppress(GrammarError):
        check_grammar(text)  # anything else it raises fails the test
    assert checker_calls(text) < MAX_CALLS


# --- through SamplingParams: what the Python API and the server both call --------------------


@pytest.mark.parametrize("grammar", ['root ::= "\ud800"', 'root ::= "\\x00"', 'root ::= "a"{2,1}',
                                     'root ::= "a"{0,100000000}', "root ::= ((((", 'a ::= "x"'])
def test_sampling_params_refuse_bad_grammars_with_grammar_error(grammar):
    with pytest.raises(GrammarError):
        SamplingParams.from_kwargs(grammar=grammar)


def test_sampling_params_keep_the_type_error_for_non_strings():
    with pytest.raises(InvalidSamplingError, match="non-empty GBNF string"):
        SamplingParams.from_kwargs(grammar=5)
    with pytest.raises(InvalidSamplingError, match="non-empty GBNF string"):
        SamplingParams(grammar="").validate()


@pytest.mark.parametrize("stop", ["\ud800", ["ok", "b\udfff"], "a\udc00b"])
def test_sampling_params_refuse_stop_strings_with_lone_surrogates(stop):
    with pytest.raises(InvalidSamplingError, match="lone surrogate"):
        SamplingParams.from_kwargs(stop=stop)


def test_sampling_params_accept_valid_grammars_and_unicode_stops():
    p = SamplingParams.from_kwargs(grammar=VALID["llama.cpp json.gbnf"], stop=["😀", "é"])
    assert p.stop == ("😀", "é")
