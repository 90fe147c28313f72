"""``kvllama bench cache``'s report as plain-text tables (Markdown-compatible)."""

from __future__ import annotations

from typing import Any


def format_report(report: dict[str, Any]) -> str:
    """The three parts as plain-text tables (Markdown-compatible)."""
    out = ["(a) time to first token, cold vs warm per tier (seconds; warm restores the prefix, "
           f"prefills a different {report['suffix_tokens']}-token suffix)", ""]
    out.append("| prefix tokens | cold | RAM warm | shm warm | disk warm | cold/RAM | cold/shm | cold/disk |")
    out.append("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in report["prefix"]:
        w, s = r["warm_ttft"], r["speedup"]
        out.append(f"| {r['prefix_tokens']} | {r['cold_ttft']:.3f} | {w['ram']:.3f} | {w['shm']:.3f} | "
                   f"{w['disk']:.3f} | {_x(s['ram'])} | {_x(s['shm'])} | {_x(s['disk'])} |")
    a = report["agents"]
    out += ["", f"(b) {a['agents']} agents x {a['turns']} turns, concurrent, sharing a "
            f"{a['system_tokens']}-token system prompt ({a['max_tokens']} tokens per reply; seconds)", ""]
    out.append("| cache | requests | TTFT mean | TTFT p90 | turn 1 mean | later turns mean | "
               "prompt tokens from cache | wall |")
    out.append("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for mode in ("on", "off"):
        m = a[mode]
        later = f"{m['later_turns_mean']:.3f}" if m["later_turns_mean"] is not None else "-"
        out.append(f"| {mode} | {m['requests']} | {m['ttft_mean']:.3f} | {m['ttft_p90']:.3f} | "
                   f"{m['first_turn_mean']:.3f} | {later} | {m['cached_prompt_fraction']:.0%} | "
                   f"{m['wall_seconds']:.1f} |")
    prewarm = a["on"]["prewarm_seconds"]
    out.append("")
    out.append(f"off/on: TTFT mean {_x(a['ratio_mean'])}, p90 {_x(a['ratio_p90'])}"
               + (f" (cache on warmed the system prompt once with prefill_only: {prewarm:.2f} s)"
                  if prewarm is not None else ""))
    c = report["restart"]
    out += ["", f"(c) first turn after a restart from the disk tier (fresh engine, {c['rows_adopted']} rows "
            f"adopted, start {c['start_seconds']:.2f} s incl. model load; seconds)", ""]
    out.append("| prefix tokens | cold | RAM warm | restart (disk) | restart/RAM warm | cold/restart |")
    out.append("| --- | --- | --- | --- | --- | --- |")
    for r in c["rows"]:
        out.append(f"| {r['prefix_tokens']} | {r['cold_ttft']:.3f} | {r['ram_warm_ttft']:.3f} | "
                   f"{r['restart_ttft']:.3f} | {_x(r['restart_vs_ram'])} | {_x(r['speedup_vs_cold'])} |")
    return "\n".join(out)


def _x(ratio: float | None) -> str:
    return "-" if ratio is None else f"{ratio:.2f}x"
