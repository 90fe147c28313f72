"""The `kvllama bench serve` workload, run against a stub-backed server."""

from __future__ import annotations

import io

import pytest

from kvllama.bench.serve import (
    build_report,
    first_turn_figures,
    print_report,
    question_text,
    run_bench_serve,
    stagger_schedule,
    system_prompt,
)
from kvllama.bench.serve_repeat import (
    parse_word_counts,
    print_repeat,
    repeat_prompt,
    repeat_row,
    run_repeat,
)
from kvllama.server import ServerConfig, ServerThread, create_app


def test_bench_serve_reports_per_round_and_overall(stub_engine):
    engine, _ = stub_engine(n_seq_max=2, n_ctx_seq=2048)
    with ServerThread(create_app(engine, ServerConfig(api_key="k"))) as url:
        report = run_bench_serve(url, "s", users=3, rounds=2, system_tokens=40, max_tokens=4, api_key="k")
    assert report["errors"] == []
    assert [row["requests"] for row in report["per_round"]] == [3, 3]
    assert report["overall"]["requests"] == 6
    assert report["generated_tokens"] == 6 * 4
    assert report["generated_tokens_per_second"] > 0
    assert report["overall"]["ttft_mean"] > 0 and report["overall"]["ttft_p90"] > 0
    # Later turns carry the growing history.
    first, second = report["per_round"]
    assert second["prompt_tokens_mean"] > first["prompt_tokens_mean"]
    out = io.StringIO()
    print_report(report, file=out)
    text = out.getvalue()
    assert "ttft mean ms" in text and "tok/s aggregate" in text and text.count("\n") >= 5


def test_bench_serve_raw_sends_growing_transcripts_to_completions(stub_engine):
    # The stub's vocabulary is bytes: ban nothing it could need, and every answer is 4 tokens.
    engine, _ = stub_engine(n_seq_max=2, n_ctx_seq=4096)
    with ServerThread(create_app(engine, ServerConfig())) as url:
        report = run_bench_serve(url, "s", users=2, rounds=3, system_tokens=30, max_tokens=4, raw=True)
    assert report["errors"] == []
    assert report["generated_tokens"] == 2 * 3 * 4
    rounds = report["per_round"]
    assert rounds[0]["prompt_tokens_mean"] < rounds[1]["prompt_tokens_mean"] < rounds[2]["prompt_tokens_mean"]


def test_transcript_puts_each_answer_after_its_question():
    from kvllama.bench.serve import _transcript

    messages = [{"role": "system", "content": "S"}, {"role": "user", "content": "q1?"},
                {"role": "assistant", "content": " a1"}, {"role": "user", "content": "q2?"}]
    assert _transcript(messages) == "S\nUser: q1?\nAssistant: a1\nUser: q2?\nAssistant:"


def test_bench_serve_reports_errors_instead_of_crashing(stub_engine):
    engine, _ = stub_engine()
    with ServerThread(create_app(engine, ServerConfig(api_key="k"))) as url:
        report = run_bench_serve(url, "s", users=1, rounds=2, system_tokens=10, max_tokens=2)
    assert len(report["errors"]) == 1 and "401" in report["errors"][0]
    assert report["overall"]["requests"] == 0


def test_system_prompt_has_about_the_asked_number_of_words():
    assert 900 <= len(system_prompt(1000).split()) <= 1000


# --- the shared-prefix shape: stagger, user-specific questions, cold single, ratios ---


def _record(user: int, round_no: int, ttft: float) -> dict:
    return {"user": user, "round": round_no, "ttft": ttft, "seconds": ttft + 0.1, "text": "x",
            "prompt_tokens": 100 * round_no, "completion_tokens": 2, "cached_tokens": 0}


def test_first_turn_figures_give_per_user_ttft_and_both_ratios():
    records = [_record(0, 1, 0.5), _record(1, 1, 0.2), _record(2, 1, 1.5), _record(0, 2, 9.0),
               {"error": "HTTP 500: x", "user": 3, "round": 1}]
    figures = first_turn_figures(records, users=4, cold_single_ttft=0.6)
    assert figures["first_turn_ttft"] == [0.5, 0.2, 1.5, None]  # round 2 and the error ignored
    assert figures["cold_single_ttft"] == 0.6
    assert figures["staggered_ratio"] == pytest.approx(1.5 / 0.5)
    assert figures["staggered_mean_ratio"] == pytest.approx((0.2 + 1.5) / 2 / 0.5)
    assert figures["at_once_ratio"] == pytest.approx(1.5 / 0.6)


def test_first_turn_figures_leave_ratios_empty_when_a_figure_is_missing():
    one_user = first_turn_figures([_record(0, 1, 0.5)], users=1, cold_single_ttft=None)
    assert one_user["first_turn_ttft"] == [0.5]
    assert one_user["staggered_ratio"] is None and one_user["at_once_ratio"] is None
    no_user1 = first_turn_figures([_record(1, 1, 0.5)], users=2, cold_single_ttft=0.25)
    assert no_user1["staggered_ratio"] is None and no_user1["at_once_ratio"] == pytest.approx(2.0)


def test_build_report_carries_the_new_figures_and_prints_them():
    settings = {"base_url": "http://x", "model": "m", "users": 2, "rounds": 2, "system_tokens": 50,
                "max_tokens": 2, "stagger": 0.5, "question_words": 8}
    records = [_record(0, 1, 0.4), _record(1, 1, 0.1), _record(0, 2, 0.1), _record(1, 2, 0.1)]
    report = build_report(settings, records, wall=2.0, cold_single_ttft=0.8)
    assert report["first_turn_ttft"] == [0.4, 0.1]
    assert report["staggered_ratio"] == pytest.approx(0.25)
    assert report["at_once_ratio"] == pytest.approx(0.5)
    assert report["stagger"] == 0.5 and report["question_words"] == 8
    assert [row["requests"] for row in report["per_round"]] == [2, 2]
    out = io.StringIO()
    print_report(report, file=out)
    text = out.getvalue()
    assert "cold single prefill" in text and "800" in text
    assert "u1=400  u2=100" in text
    assert "staggered ratio" in text and "0.25x" in text
    assert "at-once ratio" in text and "0.50x" in text


def test_question_text_differs_per_user_and_round_with_the_same_word_count():
    texts = {(u, r): question_text(u, r, 40) for u in range(4) for r in range(3)}
    assert len(set(texts.values())) == len(texts)  # every (user, round) distinct
    assert len({len(t.split()) for t in texts.values()}) == 1  # same shape for everyone
    assert question_text(2, 1, 40) == question_text(2, 1, 40)  # deterministic
    # Users diverge right after the frame: the N words themselves differ, not just the numbers.
    tails = {question_text(u, 0, 40).split(":", 1)[1] for u in range(4)}
    assert len(tails) == 4
    assert len(question_text(0, 0, 40).split()) - len(question_text(0, 0, 10).split()) == 30


def test_question_text_without_extra_words_keeps_the_short_questions():
    assert question_text(0, 0) == "What is a good name for a small boat? (conversation 1, turn 1)"
    assert question_text(1, 2).endswith("(conversation 2, turn 3)")


def test_stagger_schedule():
    assert stagger_schedule(4, 0.5) == [0.0, 0.5, 1.0, 1.5]
    assert stagger_schedule(3, 0.0) == [0.0, 0.0, 0.0]


def test_bench_serve_staggers_users_and_measures_a_cold_single(stub_engine):
    engine, _ = stub_engine(n_seq_max=2, n_ctx_seq=2048)
    with ServerThread(create_app(engine, ServerConfig())) as url:
        report = run_bench_serve(url, "s", users=3, rounds=1, system_tokens=40, max_tokens=2,
                                 stagger=0.2, question_words=12)
    assert report["errors"] == []
    assert report["wall_seconds"] >= 0.4  # the last user started 2 * 0.2 s in
    assert report["cold_single_ttft"] > 0
    assert len(report["first_turn_ttft"]) == 3 and all(t > 0 for t in report["first_turn_ttft"])
    assert report["staggered_ratio"] > 0 and report["at_once_ratio"] > 0
    assert report["generated_tokens"] == 3 * 2  # the cold single is not counted in the workload


def test_repeat_prompt_has_the_word_count_and_the_nonce_first():
    a, b = repeat_prompt(300, "runaaaa"), repeat_prompt(300, "runbbbb")
    assert len(a.split()) == 300 and a.split()[0] == "runaaaa"
    assert a != b and a.split()[1:] == b.split()[1:]
    assert parse_word_counts("2048, 4096") == [2048, 4096] and parse_word_counts("") == []
    with pytest.raises(ValueError):
        parse_word_counts("0")


def test_repeat_row_ratio_and_cached_tokens():
    row = repeat_row(100, {"ttft": 0.9, "prompt_tokens": 120, "cached_tokens": 0},
                     {"ttft": 0.3, "prompt_tokens": 122, "cached_tokens": 119})
    assert row == {"words": 100, "prompt_tokens": 120, "cold_ttft": 0.9, "warm_ttft": 0.3,
                   "ratio": pytest.approx(3.0), "warm_cached_tokens": 119}
    no_usage = repeat_row(100, {"ttft": 0.9}, {"ttft": 0.3})
    assert no_usage["warm_cached_tokens"] is None and no_usage["prompt_tokens"] is None


def test_repeat_runs_against_a_server_and_prints_a_table(stub_engine):
    engine, _ = stub_engine(n_ctx_seq=2048)
    with ServerThread(create_app(engine, ServerConfig())) as url:
        report = run_repeat(url, "s", [50, 200])
    assert report["errors"] == []
    assert [row["words"] for row in report["rows"]] == [50, 200]
    assert all(row["cold_ttft"] > 0 and row["warm_ttft"] > 0 for row in report["rows"])
    out = io.StringIO()
    print_repeat(report, file=out)
    assert "cold/warm" in out.getvalue() and out.getvalue().count("\n") == 4
