"""``kvllama bench throughput|cache|serve ... --plot FILE.png``: a bench's report as a chart.

matplotlib is optional (``pip install 'kvllama[plot]'``) and imported only
inside these functions, so ``kvllama`` imports without it. Figures are plain
:class:`matplotlib.figure.Figure` objects, never pyplot's: no display and no
GUI backend, nothing left open in pyplot's figure list, safe from any thread.
``savefig`` renders them with Agg (PNG), or in the format the file name asks
for (``.svg``, ``.pdf``).

Each ``*_figure`` function takes the report dict its bench returns (for
throughput, the ``--json`` dict ``{"benchmark": "throughput", "rows": [...]}``)
and returns the figure; each ``plot_*`` function writes it to a file.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from kvllama.errors import KvllamaError

INSTALL_HINT = "pip install 'kvllama[plot]'"
_TIERS = ("ram", "shm", "disk")
_DPI = 120


class PlotUnavailableError(KvllamaError):
    """A plot was asked for but matplotlib is not installed."""

    code = "plot_unavailable"


def require_matplotlib() -> None:
    """Raise :class:`PlotUnavailableError` (naming the extra to install) without matplotlib."""
    try:
        import matplotlib  # noqa: F401
    except ImportError as exc:
        raise PlotUnavailableError(f"plotting needs matplotlib: {INSTALL_HINT}") from exc


def plot_path(value: str) -> str:
    """argparse ``type`` for ``--plot``: fails before the bench runs, not after it."""
    try:
        require_matplotlib()
    except PlotUnavailableError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    from matplotlib.backend_bases import FigureCanvasBase

    suffix = Path(value).suffix.lower().lstrip(".")
    if suffix not in FigureCanvasBase.get_supported_filetypes():
        raise argparse.ArgumentTypeError(f"{value!r}: the file name must end in .png (or .svg, .pdf)")
    return value


def plot_throughput(report: Mapping[str, Any], path: str | Path) -> Path:
    return _save(throughput_figure(report), path)


def plot_cache(report: Mapping[str, Any], path: str | Path) -> Path:
    return _save(cache_figure(report), path)


def plot_serve(report: Mapping[str, Any], path: str | Path) -> Path:
    return _save(serve_figure(report), path)


# --- throughput ------------------------------------------------------------------


def throughput_figure(report: Mapping[str, Any]) -> Any:
    """Engine and floor tokens/s per stream count, engine/floor above each pair."""
    rows = list(report["rows"])
    fig, (ax,) = _figure(1, "bench throughput: engine vs floor (bare llama.cpp loop)")
    groups = [f"{r['streams']} stream{'' if r['streams'] == 1 else 's'}" for r in rows]
    _bars(ax, groups, {"engine": [r["engine_tokens_per_second"] for r in rows],
                       "floor": [r["floor_tokens_per_second"] for r in rows]}, fmt="{:.0f}")
    for g, r in enumerate(rows):
        top = max(r["engine_tokens_per_second"], r["floor_tokens_per_second"])
        ax.annotate(f"engine/floor {_x(r.get('ratio'))}", (g, top), xytext=(0, 14),
                    textcoords="offset points", ha="center", fontsize=9, fontweight="bold")
    bottom, top = ax.get_ylim()
    ax.set_ylim(bottom, top * 1.15)  # room for the ratios
    ax.set_ylabel("generated tokens/s (median of runs)")
    ax.legend(loc="upper left")
    return fig


# --- cache -----------------------------------------------------------------------


def cache_figure(report: Mapping[str, Any]) -> Any:
    """Cold vs warm TTFT per prefix length and tier (log y); agents on/off when present."""
    agents = report.get("agents")
    model = f" ({Path(report['model']).name})" if report.get("model") else ""
    fig, axes = _figure(2 if agents else 1, f"bench cache: time to first token{model}")
    _cache_prefix_panel(axes[0], report)
    if agents:
        _cache_agents_panel(axes[1], agents)
    return fig


def _cache_prefix_panel(ax: Any, report: Mapping[str, Any]) -> None:
    rows = report["prefix"]
    series: dict[str, list[float | None]] = {"cold": [r["cold_ttft"] for r in rows]}
    for tier in _TIERS:
        series[f"warm, {tier}"] = [r["warm_ttft"].get(tier) for r in rows]
    restart = {r["prefix_tokens"]: r["restart_ttft"] for r in (report.get("restart") or {}).get("rows", [])}
    if restart:
        series["restart (disk)"] = [restart.get(r["prefix_tokens"]) for r in rows]
    # A log axis has no place for zero: such bars are left out.
    positive = {k: [v if _ok(v) and v > 0 else None for v in vs] for k, vs in series.items()}
    _bars(ax, [str(r["prefix_tokens"]) for r in rows], positive)
    ax.set_yscale("log")
    ax.set_xlabel("shared prefix (tokens)")
    ax.set_ylabel("TTFT (s, log scale)")
    ax.set_title(f"cold vs warm per tier (warm prefills a {report.get('suffix_tokens', '?')}-token suffix)",
                 fontsize=10)
    ax.legend(fontsize=8)


def _cache_agents_panel(ax: Any, agents: Mapping[str, Any]) -> None:
    metrics = (("TTFT mean", "ttft_mean"), ("TTFT p90", "ttft_p90"), ("turn 1 mean", "first_turn_mean"),
               ("later turns mean", "later_turns_mean"))
    series = {f"cache {mode}": [agents[mode].get(key) for _, key in metrics]
              for mode in ("on", "off") if mode in agents}
    _bars(ax, [label for label, _ in metrics], series, fmt="{:.3f}")
    ax.set_ylabel("TTFT (s)")
    ratios = f"off/on: mean {_x(agents.get('ratio_mean'))}, p90 {_x(agents.get('ratio_p90'))}"
    ax.set_title(f"{agents['agents']} agents x {agents['turns']} turns sharing a "
                 f"{agents['system_tokens']}-token system prompt\n{ratios}", fontsize=10)
    ax.legend(fontsize=8)


# --- serve -----------------------------------------------------------------------


def serve_figure(report: Mapping[str, Any]) -> Any:
    """TTFT per round; per-user first turns and the repeat part's cold vs warm when present."""
    has_users = any(_ok(t) for t in report.get("first_turn_ttft") or [])
    repeat_rows = (report.get("repeat") or {}).get("rows") or []
    fig, axes = _figure(1 + has_users + bool(repeat_rows),
                        f"bench serve: {report['model']} at {report['base_url']} "
                        f"({report['users']} users x {report['rounds']} rounds)")
    _serve_rounds_panel(axes[0], report)
    rest = iter(axes[1:])
    if has_users:
        _serve_users_panel(next(rest), report)
    if repeat_rows:
        _serve_repeat_panel(next(rest), repeat_rows)
    return fig


def _serve_rounds_panel(ax: Any, report: Mapping[str, Any]) -> None:
    rows = report["per_round"]
    rounds = [r["round"] for r in rows]
    for key, label, style in (("ttft_mean", "mean", "o-"), ("ttft_p90", "p90", "s--")):
        ax.plot(rounds, [_ms(r[key]) for r in rows], style, label=label)
    if not any(_ok(r["ttft_mean"]) for r in rows):
        ax.text(0.5, 0.5, "no successful requests", transform=ax.transAxes, ha="center", va="center")
    ax.set_xticks(rounds)
    ax.set_ylim(bottom=0)
    ax.set_xlabel("round (turn)")
    ax.set_ylabel("TTFT (ms)")
    errors = len(report.get("errors") or [])
    ax.set_title("time to first token per round" + (f" ({errors} failed requests)" if errors else ""),
                 fontsize=10)
    ax.legend(fontsize=8)


def _serve_users_panel(ax: Any, report: Mapping[str, Any]) -> None:
    first = report["first_turn_ttft"]
    _bars(ax, [f"u{i + 1}" for i in range(len(first))],
          {"first turn": [_ms(t) if _ok(t) else None for t in first]}, fmt="{:.0f}")
    cold = report.get("cold_single_ttft")
    if _ok(cold):
        ax.axhline(_ms(cold), color="grey", linestyle=":", label="cold single prefill")
    stagger = report.get("stagger") or 0
    when = f"stagger {stagger:g} s" if stagger else "stagger 0: users start together"
    ax.set_xlabel("user")
    ax.set_ylabel("first-turn TTFT (ms)")
    ax.set_title(f"first-turn TTFT per user ({when})\nstaggered {_x(report.get('staggered_ratio'))}, "
                 f"at once {_x(report.get('at_once_ratio'))}", fontsize=10)
    ax.legend(fontsize=8)


def _serve_repeat_panel(ax: Any, rows: Sequence[Mapping[str, Any]]) -> None:
    groups = [f"{r['words']} words" + (f"\n{r['prompt_tokens']} tok" if r.get("prompt_tokens") else "")
              for r in rows]
    _bars(ax, groups, {"cold": [_ms(r["cold_ttft"]) for r in rows],
                       "warm (+ \" again\")": [_ms(r["warm_ttft"]) for r in rows]}, fmt="{:.0f}")
    for g, r in enumerate(rows):
        ax.annotate(f"{_x(r.get('ratio'))}", (g, _ms(max(r["cold_ttft"], r["warm_ttft"]))), xytext=(0, 12),
                    textcoords="offset points", ha="center", fontsize=9, fontweight="bold")
    bottom, top = ax.get_ylim()
    ax.set_ylim(bottom, top * 1.12)
    ax.set_ylabel("TTFT (ms)")
    ax.set_title("the same prompt twice: cold vs warm (cold/warm above)", fontsize=10)
    ax.legend(fontsize=8)


# --- helpers ---------------------------------------------------------------------


def _figure(panels: int, title: str) -> tuple[Any, list[Any]]:
    require_matplotlib()
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4 * panels, 4.8), layout="constrained")
    axes = fig.subplots(1, panels, squeeze=False)[0]
    fig.suptitle(title, fontsize=11)
    return fig, list(axes)


def _save(fig: Any, path: str | Path) -> Path:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=_DPI)
    return out


def _bars(ax: Any, groups: Sequence[str], series: Mapping[str, Sequence[float | None]],
          fmt: str | None = None) -> None:
    """Grouped bars, one group per entry of ``groups``; a missing value (None) leaves a gap."""
    width = 0.8 / max(1, len(series))
    for i, (name, values) in enumerate(series.items()):
        offset = (i - (len(series) - 1) / 2) * width
        kept = [(g + offset, v) for g, v in enumerate(values) if _ok(v)]
        # Fixed colours per series; an empty series stays out of the legend ("_" labels).
        bars = ax.bar([x for x, _ in kept], [v for _, v in kept], width, color=f"C{i}",
                      label=name if kept else f"_{name}")
        if fmt and kept:
            ax.bar_label(bars, fmt=fmt, fontsize=7)
    ax.set_xticks(range(len(groups)), groups)


def _ok(v: float | None) -> bool:
    return v is not None and math.isfinite(v)


def _ms(seconds: float | None) -> float:
    return seconds * 1000 if _ok(seconds) else math.nan  # type: ignore[operator]


def _x(ratio: float | None) -> str:
    return "-" if ratio is None else f"{ratio:.2f}x"
