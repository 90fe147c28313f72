"""`kvllama bench ... --plot FILE.png`: the bench reports drawn with matplotlib (kvllama.bench.plots)."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path

import matplotlib.pyplot as plt
import pytest

from kvllama import cli
from kvllama.backend.stub import StubBackend, StubConfig
from kvllama.bench import plots
from kvllama.bench.cache import run_bench_cache
from kvllama.bench.serve import build_report
from kvllama.bench.serve_repeat import repeat_row
from kvllama.bench.throughput import ThroughputRow, as_json
from kvllama.server import ServerConfig, ServerThread, create_app

PANEL_PX = int(6.4 * 120)  # each panel is 6.4 inches wide, saved at 120 dpi


def png_width(path: Path) -> int:
    """The PNG's width after checking its signature and that it is more than a blank page."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    assert len(data) > 10_000, f"suspiciously small PNG ({len(data)} bytes)"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">I", data[16:20])[0]


def texts(fig) -> str:
    """Every title, suptitle, annotation and tick label of the figure, one string."""
    out = [fig.get_suptitle()]
    for ax in fig.axes:
        out.append(ax.get_title())
        out += [t.get_text() for t in (*ax.texts, *ax.get_xticklabels())]
    return "\n".join(out)


def bar_heights(ax) -> dict[str, list[float]]:
    return {c.get_label(): [p.get_height() for p in c.patches] for c in ax.containers}


@pytest.fixture(autouse=True)
def no_pyplot_figures_left():
    assert plt.get_fignums() == []
    yield
    assert plt.get_fignums() == [], "a plot left a pyplot figure open"


# --- report dicts in the shape each bench returns --------------------------------


def throughput_report() -> dict:
    rows = [ThroughputRow(1, 50.1, 55.0, 0.911, 18.2, 25.0, 64),
            ThroughputRow(4, 150.4, 140.0, 1.074, 20.0, 31.5, 256),
            ThroughputRow(8, 240.0, 250.0, 0.96, 30.0, 41.0, 512)]
    return {"benchmark": "throughput", "rows": as_json(rows)}  # what `bench throughput --json` writes


def cache_report() -> dict:
    def prefix_row(size: int, cold: float, ram: float, shm: float, disk: float) -> dict:
        warm = {"ram": ram, "shm": shm, "disk": disk}
        return {"prefix_tokens": size, "cold_ttft": cold, "warm_ttft": warm,
                "speedup": {t: round(cold / v, 2) if v else None for t, v in warm.items()},
                "restored_tokens": {"ram": size, "shm": size, "disk": size},
                "cold_runs": [cold] * 3, "warm_runs": {t: [v] for t, v in warm.items()}}

    def mode(mean: float, later: float | None, prewarm: float | None) -> dict:
        return {"requests": 16, "ttft_mean": mean, "ttft_p90": mean * 1.5, "first_turn_mean": mean * 1.2,
                "later_turns_mean": later, "cached_prompt_fraction": 0.8, "hit_kinds": {"cold": 16},
                "prewarm_seconds": prewarm, "wall_seconds": 3.2}

    return {
        "benchmark": "cache", "model": "/models/gemma-3-270m.gguf", "sizes": [512, 1024], "repeat": 3,
        "suffix_tokens": 16,
        "prefix": [prefix_row(512, 0.25, 0.012, 0.02, 0.0), prefix_row(1024, 0.6, 0.014, 0.025, 0.05)],
        "agents": {"agents": 4, "turns": 4, "system_tokens": 1000, "max_tokens": 32,
                   "on": mode(0.05, 0.04, 0.3), "off": mode(0.2, None, None),
                   "ratio_mean": 4.0, "ratio_p90": 4.0},
        "restart": {"start_seconds": 1.2, "rows_adopted": 6, "rows": [
            {"prefix_tokens": 512, "cold_ttft": 0.25, "ram_warm_ttft": 0.012, "restart_ttft": 0.04,
             "restart_vs_ram": 3.33, "speedup_vs_cold": 6.25, "restored_tokens": 512},
            {"prefix_tokens": 1024, "cold_ttft": 0.6, "ram_warm_ttft": 0.014, "restart_ttft": 0.06,
             "restart_vs_ram": 4.29, "speedup_vs_cold": 10.0, "restored_tokens": 1024}]},
    }


def _record(user: int, round_no: int, ttft: float) -> dict:
    return {"user": user, "round": round_no, "ttft": ttft, "seconds": ttft + 0.1, "text": "x",
            "prompt_tokens": 100 * round_no, "completion_tokens": 2, "cached_tokens": 90 * (round_no > 1)}


def serve_report(stagger: float = 0.5, with_repeat: bool = True) -> dict:
    settings = {"base_url": "http://127.0.0.1:8000", "model": "default", "users": 3, "rounds": 3,
                "system_tokens": 50, "max_tokens": 2, "stagger": stagger, "question_words": 8}
    records = [_record(u, r, 0.4 / r + 0.05 * u) for u in range(3) for r in (1, 2, 3)]
    report = build_report(settings, records, wall=2.0, cold_single_ttft=0.8)
    if with_repeat:  # what `--repeat-words 2048,512` adds
        rows = [repeat_row(2048, {"ttft": 1.2, "prompt_tokens": 2562}, {"ttft": 0.1, "cached_tokens": 2560}),
                repeat_row(512, {"ttft": 0.3}, {"ttft": 0.05})]
        report["repeat"] = {"rows": rows, "errors": []}
    return report


# --- the plots -------------------------------------------------------------------


def test_throughput_plot_has_engine_and_floor_bars_and_the_ratio(tmp_path):
    report = throughput_report()
    fig = plots.throughput_figure(report)
    (ax,) = fig.axes
    assert bar_heights(ax) == {"engine": [50.1, 150.4, 240.0], "floor": [55.0, 140.0, 250.0]}
    labels = texts(fig)
    for ratio in ("0.91x", "1.07x", "0.96x"):
        assert f"engine/floor {ratio}" in labels
    assert "1 stream" in labels and "8 streams" in labels
    out = plots.plot_throughput(report, tmp_path / "sub" / "throughput.png")
    assert out == tmp_path / "sub" / "throughput.png" and png_width(out) == PANEL_PX


def test_cache_plot_is_log_scale_per_tier_with_the_agents_panel(tmp_path):
    report = cache_report()
    fig = plots.cache_figure(report)
    prefix_ax, agents_ax = fig.axes
    assert prefix_ax.get_yscale() == "log"
    heights = bar_heights(prefix_ax)
    assert heights["cold"] == [0.25, 0.6] and heights["warm, ram"] == [0.012, 0.014]
    assert heights["warm, disk"] == [0.05]  # the zero TTFT has no place on a log axis
    assert heights["restart (disk)"] == [0.04, 0.06]
    agents = bar_heights(agents_ax)
    assert agents["cache on"] == pytest.approx([0.05, 0.075, 0.06, 0.04])
    assert agents["cache off"] == pytest.approx([0.2, 0.3, 0.24])  # no later turns: no bar
    assert "off/on: mean 4.00x" in texts(fig) and "gemma-3-270m.gguf" in texts(fig)
    assert png_width(plots.plot_cache(report, tmp_path / "cache.png")) == 2 * PANEL_PX


def test_cache_plot_without_agents_has_one_panel(tmp_path):
    report = cache_report()
    del report["agents"]
    assert len(plots.cache_figure(report).axes) == 1
    assert png_width(plots.plot_cache(report, tmp_path / "cache.png")) == PANEL_PX


def test_cache_plot_of_a_real_stub_run(tmp_path):
    """The plot reads the report exactly as run_bench_cache builds it, not only the hand-made one."""
    report = run_bench_cache(
        None, {"n_threads": 1}, sizes=[128, 192], agents=2, turns=2, system_tokens=150, agent_max_tokens=4,
        backend_factory=lambda _p, _o: StubBackend(StubConfig(n_ctx_seq=1024, decode_delay=0.001)),
    )
    path = tmp_path / "cache.png"
    plots.plot_cache(json.loads(json.dumps(report)), path)  # as read back from --json too
    assert png_width(path) == 2 * PANEL_PX


def test_serve_plot_has_rounds_users_with_stagger_and_repeat(tmp_path):
    report = serve_report()
    fig = plots.serve_figure(report)
    rounds_ax, users_ax, repeat_ax = fig.axes
    mean, p90 = rounds_ax.get_lines()
    assert list(mean.get_xdata()) == [1, 2, 3]
    assert list(mean.get_ydata()) == pytest.approx([450.0, 250.0, 183.33], abs=0.01)
    assert list(p90.get_ydata()) == pytest.approx([500.0, 300.0, 233.33], abs=0.01)
    assert bar_heights(users_ax)["first turn"] == pytest.approx([400.0, 450.0, 500.0])
    assert "stagger 0.5 s" in users_ax.get_title() and "staggered 1.25x" in users_ax.get_title()
    repeat = bar_heights(repeat_ax)
    assert repeat["cold"] == pytest.approx([1200.0, 300.0])
    assert repeat["warm (+ \" again\")"] == pytest.approx([100.0, 50.0])
    assert "12.00x" in texts(fig) and "2562 tok" in texts(fig)
    assert png_width(plots.plot_serve(report, tmp_path / "serve.png")) == 3 * PANEL_PX


def test_serve_plot_without_stagger_or_repeat(tmp_path):
    report = serve_report(stagger=0.0, with_repeat=False)
    fig = plots.serve_figure(report)
    assert len(fig.axes) == 2
    assert "stagger 0: users start together" in fig.axes[1].get_title()
    assert png_width(plots.plot_serve(report, tmp_path / "serve.png")) == 2 * PANEL_PX


def test_serve_plot_of_a_failed_run_still_draws_the_rounds_panel(tmp_path):
    settings = {"base_url": "http://x", "model": "m", "users": 2, "rounds": 2, "max_tokens": 2}
    report = build_report(settings, [{"error": "cold single: HTTP 401: no"}], 0.0, None)
    fig = plots.serve_figure(report)
    assert len(fig.axes) == 1 and "no successful requests" in texts(fig)
    assert "1 failed requests" in fig.axes[0].get_title()
    assert png_width(plots.plot_serve(report, tmp_path / "serve.png")) == PANEL_PX


# --- without matplotlib, and the CLI -----------------------------------------------


def test_without_matplotlib_the_error_names_the_extra(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` now raises ImportError
    with pytest.raises(plots.PlotUnavailableError, match=r"pip install 'kvllama\[plot\]'"):
        plots.plot_throughput(throughput_report(), tmp_path / "t.png")
    assert not (tmp_path / "t.png").exists()
    # The CLI refuses --plot before running the bench, not after.
    with pytest.raises(SystemExit) as exc:
        cli.main(["bench", "serve", "--url", "http://127.0.0.1:9", "--plot", str(tmp_path / "s.png")])
    assert exc.value.code == 2
    assert "pip install 'kvllama[plot]'" in capsys.readouterr().err


def test_cli_refuses_a_file_type_matplotlib_cannot_write(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["bench", "cache", "--plot", str(tmp_path / "cache.txt")])
    assert exc.value.code == 2 and "must end in .png" in capsys.readouterr().err


def test_kvllama_imports_without_loading_matplotlib():
    code = ("import sys; import kvllama, kvllama.cli, kvllama.bench.plots; "
            "assert 'matplotlib' not in sys.modules, 'matplotlib was imported'")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


def test_cli_bench_serve_plot_against_the_stub_server(stub_engine, tmp_path, capsys):
    engine, _ = stub_engine(n_seq_max=2, n_ctx_seq=2048)
    png, figures = tmp_path / "serve.png", tmp_path / "serve.json"
    with ServerThread(create_app(engine, ServerConfig())) as url:
        code = cli.main(["bench", "serve", "--url", url, "--served-model-name", "s", "--users", "2",
                         "--rounds", "2", "--system-tokens", "40", "--max-tokens", "2", "--stagger", "0.05",
                         "--question-words", "4", "--repeat-words", "30", "--json", str(figures),
                         "--plot", str(png)])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "ttft mean ms" in out and "cold/warm" in out  # the report is printed as before
    assert json.loads(figures.read_text())["repeat"]["rows"]
    assert png_width(png) == 3 * PANEL_PX  # rounds, per-user first turns, repeat
