"""The `kvllama bench serve` workload, run against a stub-backed server."""

from __future__ import annotations

import io

from kvllama.bench.serve import print_report, run_bench_serve, system_prompt
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


def test_bench_serve_reports_errors_instead_of_crashing(stub_engine):
    engine, _ = stub_engine()
    with ServerThread(create_app(engine, ServerConfig(api_key="k"))) as url:
        report = run_bench_serve(url, "s", users=1, rounds=2, system_tokens=10, max_tokens=2)
    assert len(report["errors"]) == 1 and "401" in report["errors"][0]
    assert report["overall"]["requests"] == 0


def test_system_prompt_has_about_the_asked_number_of_words():
    assert 900 <= len(system_prompt(1000).split()) <= 1000
