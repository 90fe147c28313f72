"""The ``kvllama`` command line.

Subcommands each live in a small function; shared model-loading flags are
declared once in :func:`kvllama.cli_model.add_model_flags` so every command accepts the same
llama.cpp options as the Python API.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kvllama.bench.media import add_bench_media_parser
from kvllama.bench.named_models import bench_model_path
from kvllama.bench.plots import plot_cache, plot_path, plot_serve, plot_throughput
from kvllama.cache_cli import add_cache_flags
from kvllama.cache_cli import register as register_cache_command
from kvllama.cli_model import MODEL_FLAGS, MODEL_ID, add_model_flags, load, pick
from kvllama.errors import KvllamaError
from kvllama.events import DoneEvent, TextEvent
from kvllama.media.messages import MEDIA_MARKER
from kvllama.scale_cli import add_bench_route_parser
from kvllama.serve_cli import add_serve_parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KvllamaError as exc:
        print(f"kvllama: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `kvllama cache list | head`: the reader left; not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kvllama", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    complete = sub.add_parser("complete", help="generate a completion, streamed to stdout")
    complete.add_argument("prompt", help="the prompt text ('-' reads standard input)")
    add_model_flags(complete)
    _add_sampling_flags(complete)
    add_cache_flags(complete)
    complete.add_argument("--stats", action="store_true", help="print timing stats to stderr")
    complete.add_argument("--media", action="append", default=None, metavar="FILE",
                          help="an image or audio file for the prompt (repeatable; needs --mmproj): at the "
                               "prompt's <__media__> markers, else before its text")
    complete.set_defaults(func=_cmd_complete)

    models = sub.add_parser("models", help="load a model (default: the embedded one) and show its info")
    add_model_flags(models)
    add_cache_flags(models)
    models.add_argument("--json", action="store_true", help="print JSON")
    models.set_defaults(func=_cmd_models)

    add_serve_parser(sub)
    _add_bench_parsers(sub)
    register_cache_command(sub)
    return parser


def _add_bench_parsers(sub: Any) -> None:
    bench = sub.add_parser("bench", help="benchmarks that measure side by side in one run")
    bench_sub = bench.add_subparsers(dest="bench", required=True)
    tput = bench_sub.add_parser(
        "throughput", help="engine vs a bare llama_decode loop, by concurrency",
        description="Per concurrency N: N prompts through the engine (greedy, no KV cache) and through "
                    "a bare loop over the same llama.cpp wheel (one prefill, N rows per step, argmax), "
                    "alternating; prints the medians and engine/floor. --model takes any GGUF, or \"tiny\" "
                    "for a 23 MB random-weight Gemma 3 (written once to the cache dir) whose fast forward "
                    "pass shows the engine's own cost per token.")
    add_model_flags(tput)
    tput.add_argument("--streams", default="1,4,8", help="concurrency levels, comma separated")
    tput.add_argument("--prompt-tokens", type=int, default=200, help="tokens per prompt")
    tput.add_argument("--max-tokens", type=int, default=64, help="tokens generated per stream")
    tput.add_argument("--repeat", type=int, default=3, help="alternating runs per level (medians)")
    tput.add_argument("--separate", action="store_true",
                      help="one infer() call per stream from its own thread, as N clients arrive (default: "
                           "infer_many, admitted together)")
    tput.add_argument("--json", dest="json_file", default=None, help="also write the figures here")
    tput.add_argument("--plot", metavar="FILE.png", type=plot_path, default=None,
                      help="also draw the figures into this image (needs: pip install 'kvllama[plot]')")
    tput.set_defaults(func=_cmd_bench_throughput)
    _add_bench_serve_parser(bench_sub)
    _add_bench_cache_parser(bench_sub)
    add_bench_media_parser(bench_sub)
    spec = bench_sub.add_parser(
        "spec", help="speculative decoding on vs off (copy task, and by concurrency), same-tokens check",
        description="Canonical decoding on both sides (the command sets GGML_CPU_TILED_MM=0): one "
                    "engine with prompt-lookup speculation, one without; a ~500-token copy task on one "
                    "stream, then the throughput workload at --streams; medians of alternating runs.")
    add_model_flags(spec)
    spec.add_argument("--streams", default="4,8", help="concurrency levels for the throughput rows")
    spec.add_argument("--max-tokens", type=int, default=64, help="tokens per stream (the copy task: 4x)")
    spec.add_argument("--draft", type=int, default=8, help="draft tokens per step (speculative_draft)")
    spec.add_argument("--repeat", type=int, default=2, help="alternating runs per row (medians)")
    spec.add_argument("--json", dest="json_file", default=None, help="also write the figures here")
    spec.set_defaults(func=_cmd_bench_spec)


def _add_bench_serve_parser(bench_sub: Any) -> None:
    bserve = bench_sub.add_parser("serve", help="multi-turn chat workload against an OpenAI-style server")
    bserve.add_argument("--url", "--base-url", dest="url", default=None,
                        help="the server (default http://127.0.0.1:8000; with --throughput: one the bench "
                             "starts with the model flags)")
    bserve.add_argument("--served-model-name", default=MODEL_ID)
    bserve.add_argument("--users", type=int, default=4)
    bserve.add_argument("--rounds", type=int, default=4)
    bserve.add_argument("--system-tokens", type=int, default=1000)
    bserve.add_argument("--max-tokens", type=int, default=None, help="per reply (32; --throughput: 64)")
    bserve.add_argument("--stagger", type=float, default=0.0, metavar="SECONDS",
                        help="user u starts u*SECONDS after the bench starts (0 = all at once)")
    bserve.add_argument("--question-words", type=int, default=0, metavar="N",
                        help="N user-specific words per question, so users share only the system prompt")
    bserve.add_argument("--raw", action="store_true",
                        help="plain-transcript /v1/completions instead of chat (EOG tokens banned: every "
                             "answer has --max-tokens tokens)")
    bserve.add_argument("--repeat-words", default="", metavar="W1,W2",
                        help="also time one W-word prompt cold, then again warm (/v1/completions)")
    bserve.add_argument("--throughput", default="", metavar="N1,N2",
                        help="instead: N concurrent 200-token completions of 64 tokens per N, "
                             "beside bare llama.cpp (the floor) loading --model with the same flags")
    bserve.add_argument("--repeat", type=int, default=3, help="--throughput: alternating runs per N")
    bserve.add_argument("--prompt-tokens", type=int, default=200, help="--throughput: tokens per prompt")
    add_model_flags(bserve)
    bserve.add_argument("--api-key", default=os.environ.get("KVLLAMA_API_KEY"))
    bserve.add_argument("--json", dest="json_file", default=None, help="also write the figures here")
    bserve.add_argument("--plot", metavar="FILE.png", type=plot_path, default=None,
                        help="also draw the figures into this image (needs: pip install 'kvllama[plot]')")
    bserve.set_defaults(func=_cmd_bench_serve)


def _add_bench_cache_parser(bench_sub: Any) -> None:
    add_bench_route_parser(bench_sub)
    bcache = bench_sub.add_parser(
        "cache", help="time to first token cold vs warm per tier, agents sharing a prompt, restart",
        description="Cold vs warm TTFT per tier, four agents sharing a system prompt with the cache "
                    "on and off, and the first turn after a restart from the disk tier. The tier "
                    "directories are temporary; --n-ctx and --n-seq-max are chosen per part.")
    add_model_flags(bcache)
    bcache.add_argument("--sizes", default="512,1024,2048,4096",
                        help="shared prefix lengths in tokens, multiples of 64 (default: %(default)s)")
    bcache.add_argument("--repeat", type=int, default=1, help="alternating runs per figure (medians)")
    bcache.add_argument("--agents", type=int, default=4)
    bcache.add_argument("--turns", type=int, default=4)
    bcache.add_argument("--system-tokens", type=int, default=1000)
    bcache.add_argument("--max-tokens", type=int, default=32, help="reply tokens per agent turn")
    bcache.add_argument("--json", dest="json_file", default=None, help="also write the figures here")
    bcache.add_argument("--plot", metavar="FILE.png", type=plot_path, default=None,
                        help="also draw the figures into this image (needs: pip install 'kvllama[plot]')")
    bcache.set_defaults(func=_cmd_bench_cache)


def _add_sampling_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("sampling")
    g.add_argument("--max-tokens", "-n", type=int, default=128)
    g.add_argument("--temperature", "-t", type=float, default=None)
    g.add_argument("--top-k", type=int, default=None)
    g.add_argument("--top-p", type=float, default=None)
    g.add_argument("--min-p", type=float, default=None)
    g.add_argument("--repetition-penalty", type=float, default=None)
    g.add_argument("--frequency-penalty", type=float, default=None)
    g.add_argument("--presence-penalty", type=float, default=None)
    g.add_argument("--seed", type=int, default=None)
    g.add_argument("--stop", action="append", default=None, help="stop sequence (repeatable)")
    g.add_argument("--grammar", default=None, help="GBNF grammar text")
    g.add_argument("--grammar-file", default=None, help="file with a GBNF grammar")


_SAMPLING_FLAGS = ("max_tokens", "temperature", "top_k", "top_p", "min_p", "repetition_penalty",
                   "frequency_penalty", "presence_penalty", "seed", "stop", "grammar")


def _cmd_complete(args: argparse.Namespace) -> int:
    prompt = sys.stdin.read() if args.prompt == "-" else args.prompt
    params = pick(args, _SAMPLING_FLAGS)
    if args.grammar_file:
        with open(args.grammar_file, encoding="utf-8") as f:
            params["grammar"] = f.read()
    if args.media:
        params["media"] = [Path(f).read_bytes() for f in args.media]
        if MEDIA_MARKER not in prompt:
            prompt = MEDIA_MARKER * len(args.media) + prompt
    with load(args) as engine:
        stream = engine.infer(MODEL_ID, prompt, **params)
        done: DoneEvent | None = None
        for event in stream:
            if isinstance(event, TextEvent):
                sys.stdout.write(event.text)
                sys.stdout.flush()
            elif isinstance(event, DoneEvent):
                done = event
            elif event.type == "error":
                raise event.error
        sys.stdout.write("\n")
        if args.stats and done is not None:
            s = done.stats
            ttft = f"{s.time_to_first_token:.3f}s" if s.time_to_first_token is not None else "-"
            print(
                f"[{done.finish_reason}] prompt {s.prompt_tokens} tok, generated "
                f"{s.generated_tokens} tok, prefill {s.prefill_seconds:.3f}s, ttft {ttft}, "
                f"decode {s.tokens_per_second:.1f} tok/s, seed {done.seed}",
                file=sys.stderr,
            )
    return 0


def _cmd_models(args: argparse.Namespace) -> int:
    with load(args) as engine:
        for info in engine.list_models():
            data = info.as_dict()
            if args.json:
                print(json.dumps(data, indent=2))
                continue
            for key, value in data.items():
                if isinstance(value, dict):
                    value = ", ".join(f"{k}={v}" for k, v in value.items())
                print(f"{key:22} {value}")
    return 0


def _cmd_bench_serve(args: argparse.Namespace) -> int:
    from kvllama.bench.serve import print_report, run_bench_serve
    from kvllama.bench.serve_repeat import parse_word_counts, print_repeat, run_repeat

    if args.throughput:
        return _bench_serve_throughput(args)
    args.url, args.max_tokens = args.url or "http://127.0.0.1:8000", args.max_tokens or 32
    repeat_words = parse_word_counts(args.repeat_words)
    report = run_bench_serve(args.url, args.served_model_name, users=args.users, rounds=args.rounds,
                             system_tokens=args.system_tokens, max_tokens=args.max_tokens,
                             api_key=args.api_key, stagger=args.stagger, question_words=args.question_words,
                             raw=args.raw)
    print_report(report)
    if repeat_words:
        report["repeat"] = run_repeat(args.url, args.served_model_name, repeat_words, api_key=args.api_key)
        print_repeat(report["repeat"])
    if args.json_file:
        with open(args.json_file, "w", encoding="utf-8") as f:
            json.dump(report, f, indent=2)
    if args.plot:
        plot_serve(report, args.plot)
    return 1 if report.get("errors") or report.get("repeat", {}).get("errors") else 0


def _bench_serve_throughput(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from kvllama.bench.serve_throughput import format_rows, run_http_throughput

    rows = run_http_throughput(args.url, args.served_model_name, bench_model_path(args.model),
                               pick(args, MODEL_FLAGS), _streams(args.throughput), args.prompt_tokens,
                               args.max_tokens or 64, repeat=args.repeat, api_key=args.api_key)
    print(format_rows(rows))
    if args.json_file:
        with open(args.json_file, "w", encoding="utf-8") as f:
            json.dump([asdict(r) for r in rows], f, indent=2)
    return 0


def _streams(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def _cmd_bench_throughput(args: argparse.Namespace) -> int:
    from kvllama.bench.throughput import as_json, format_table, run_throughput

    rows = run_throughput(bench_model_path(args.model), pick(args, MODEL_FLAGS), _streams(args.streams),
                          args.prompt_tokens, args.max_tokens, repeat=args.repeat, separate=args.separate)
    print(format_table(rows))
    report = {"benchmark": "throughput", "rows": as_json(rows)}
    if args.json_file:
        with open(args.json_file, "w", encoding="utf-8") as f:
            json.dump(report, f, indent=2)
    if args.plot:
        plot_throughput(report, args.plot)
    return 0


def _cmd_bench_spec(args: argparse.Namespace) -> int:
    from kvllama.bench.spec import format_spec, run_spec
    from kvllama.native.kernels import pass_kernels
    from kvllama.native.library import llama

    llama()  # loads the library; ggml reads its kernel variables only at its first matmul
    canonical = not pass_kernels().available  # a stock build: speculation needs canonical decoding
    if canonical:
        os.environ.setdefault("GGML_CPU_TILED_MM", "0")

    options = {k: v for k, v in pick(args, MODEL_FLAGS).items()
               if k not in ("canonical_decode", "n_seq_max", "speculative_draft", "draft_model")}
    draft_model = bench_model_path(args.draft_model) if args.draft_model else None
    report = run_spec(args.model, options, _streams(args.streams), args.max_tokens, args.draft, args.repeat,
                      draft_model, canonical=canonical)
    print(format_spec(report))
    if args.json_file:
        with open(args.json_file, "w", encoding="utf-8") as f:
            json.dump(report, f, indent=2)
    exact = all(row["same_tokens"] for row in report["rows"]) and report["verify"]["exact"]
    return 0 if exact else 1


def _cmd_bench_cache(args: argparse.Namespace) -> int:
    from kvllama.bench.cache import run_bench_cache
    from kvllama.bench.cache_report import format_report

    sizes = [int(x) for x in args.sizes.split(",") if x.strip()]
    options = pick(args, MODEL_FLAGS)
    report = run_bench_cache(args.model, options, sizes=sizes, repeat=args.repeat, agents=args.agents,
                             turns=args.turns, system_tokens=args.system_tokens,
                             agent_max_tokens=args.max_tokens,
                             progress=lambda line: print(line, file=sys.stderr, flush=True))
    print(format_report(report))
    if args.json_file:
        with open(args.json_file, "w", encoding="utf-8") as f:
            json.dump(report, f, indent=2)
    if args.plot:
        plot_cache(report, args.plot)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
