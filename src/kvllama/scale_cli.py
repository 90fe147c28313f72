"""The scale-out commands: ``kvllama serve --replicas N`` and ``kvllama bench route`` (kvllama.ray)."""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

from kvllama.cli_model import add_model_flags, engine_spec


def replica_spec(args: argparse.Namespace) -> Any:
    """The CLI's engine, with the machine's cores split between the replicas unless --n-threads says."""
    spec = engine_spec(args)
    if "n_threads" not in spec.options:
        threads = max(1, (os.cpu_count() or 1) // args.replicas)
        spec = replace(spec, options={**spec.options, "n_threads": threads})
    return spec


def serve_replicas(args: argparse.Namespace, config: Any) -> int:
    from kvllama.ray import local
    from kvllama.server.runner import listening_banner

    if args.replicas < 1:
        raise SystemExit("--replicas must be at least 1")
    spec = replica_spec(args)
    model = f"{args.model or 'embedded Gemma 3 270M'}, {args.replicas} replicas ({args.router} routing)"

    def announce(url: str) -> None:
        print(listening_banner(url, {args.served_model_name: model}, api_key=args.api_key is not None,
                               bind=args.host), flush=True)

    local.run_forever(lambda: local.start(spec, config, replicas=args.replicas, host=args.host,
                                          port=args.port, router=args.router), announce)
    return 0


def add_bench_route_parser(bench_sub: Any) -> None:
    route = bench_sub.add_parser(
        "route", help="scale-out: cache-affinity routing vs Ray Serve's default on a multi-turn workload",
        description="Starts a local Ray Serve deployment of --replicas engines twice, once per router "
                    "(kvllama's cache-affinity router, Ray Serve's power of two choices), runs the same "
                    "multi-turn chat workload against each, and compares TTFT and cache hit rates.")
    add_model_flags(route)
    route.add_argument("--replicas", type=int, default=2)
    route.add_argument("--groups", type=int, default=2, help="user groups, one system prompt each")
    route.add_argument("--users-per-group", type=int, default=2)
    route.add_argument("--rounds", type=int, default=4)
    route.add_argument("--system-tokens", type=int, default=400)
    route.add_argument("--first-words", type=int, default=250,
                       help="words of each user's own material in its first message")
    route.add_argument("--question-words", type=int, default=15, help="words per later question")
    route.add_argument("--max-tokens", type=int, default=32)
    route.add_argument("--think", type=float, default=2.0, metavar="SECONDS",
                       help="each user pauses a random 0..SECONDS before every turn")
    route.add_argument("--port", type=int, default=8199)
    route.add_argument("--json", dest="json_file", default=None, help="also write the figures here")
    route.set_defaults(func=_cmd_bench_route)


def _cmd_bench_route(args: argparse.Namespace) -> int:
    from kvllama.bench.route import print_route, run_bench_route

    report = run_bench_route(
        replica_spec(args), replicas=args.replicas, groups=args.groups, users_per_group=args.users_per_group,
        rounds=args.rounds, system_tokens=args.system_tokens, first_words=args.first_words,
        question_words=args.question_words,
        max_tokens=args.max_tokens, think=args.think, port=args.port)
    print_route(report)
    if args.json_file:
        Path(args.json_file).write_text(json.dumps(report, indent=2))
    return 0


