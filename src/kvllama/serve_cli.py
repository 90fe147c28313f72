"""``kvllama serve``: the flags, the engine with its models, and the HTTP server over it.

Several ``--model NAME=PATH`` are served under their names, the first loaded
at start and the others on their first request (``--keep-alive``,
``--max-loaded-models`` and ``--max-memory`` decide how long and how many stay
in memory, docs/guide/models.md). One bare ``--model PATH`` serves that file
as ``--served-model-name``, as before.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

from kvllama.cache_cli import add_cache_flags, parse_bytes
from kvllama.cli_model import MODEL_ID, add_model_flags, catalog, load
from kvllama.media.inputs import MediaLimits
from kvllama.models.default import default_model_path
from kvllama.request.options import parse_keep_alive
from kvllama.scale_cli import serve_replicas
from kvllama.server.config import DEFAULT_MAX_QUEUE


def add_serve_parser(sub: Any) -> None:
    srv = sub.add_parser("serve", help="serve OpenAI- and Anthropic-compatible HTTP endpoints")
    add_model_flags(srv, several=True)
    add_cache_flags(srv)
    g = srv.add_argument_group("server")
    g.add_argument("--host", default="127.0.0.1", help="bind address (default: loopback only)")
    g.add_argument("--port", type=int, default=8000)
    g.add_argument("--served-model-name", default=MODEL_ID,
                   help="model name clients send (default: %(default)s)")
    g.add_argument("--api-key", default=os.environ.get("KVLLAMA_API_KEY"),
                   help="require this key (default: $KVLLAMA_API_KEY, else no auth)")
    g.add_argument("--max-tokens-limit", type=int, default=4096)
    g.add_argument("--max-body-bytes", type=int, default=None,
                   help="larger bodies are refused (413); default 4 MiB, 64 MiB when a model has a projector")
    g.add_argument("--max-media", type=int, default=MediaLimits.max_media, metavar="N",
                   help="images and audio clips per request (default %(default)s)")
    g.add_argument("--max-media-bytes", type=parse_bytes, default=MediaLimits.max_bytes, metavar="BYTES",
                   help="bytes per image or audio clip (default 20MB)")
    g.add_argument("--responses-max", type=int, default=10_000, metavar="N",
                   help="stored Responses-API responses kept (the oldest go first; default %(default)s)")
    g.add_argument("--responses-ttl", default="720h", metavar="DURATION",
                   help="how long a stored response is kept (default 720h, 30 days; kept beside the "
                        "disk tier's rows when there is one, so they survive a restart)")
    g.add_argument("--priority-header", default=None, metavar="NAME",
                   help="a header a trusted proxy sets to give a request its priority (lower runs "
                        "sooner; it wins over the body's priority field)")
    g.add_argument("--max-image-pixels", type=int, default=MediaLimits.max_pixels, metavar="N",
                   help="pixels per image, read from its header before decoding (default 50,000,000)")
    g.add_argument("--max-queue", type=int, default=DEFAULT_MAX_QUEUE,
                   help="refuse (429/529) beyond this many queued requests per model "
                        f"(default {DEFAULT_MAX_QUEUE}; -1: unbounded)")
    g.add_argument("--thinking-key", default=os.environ.get("KVLLAMA_THINKING_KEY"),
                   help="sign thinking blocks with this key (default: $KVLLAMA_THINKING_KEY)")
    g.add_argument("--models-dir", default=None, metavar="DIR",
                   help="serve every *.gguf in DIR under its file stem (loaded on first use)")
    g.add_argument("--models-file", default=None, metavar="FILE",
                   help="TOML or JSON: per model a path and its own load options, keep_alive and adapters "
                        "(docs/guide/models.md)")
    g.add_argument("--keep-alive", default="5m", metavar="DURATION",
                   help="how long an idle model stays loaded (Ollama's keep_alive: 5m, 1h, 0, -1 = for ever; "
                        "requests may set their own)")
    g.add_argument("--max-loaded-models", type=int, default=None, metavar="N",
                   help="models in memory at once (the least recently used idle one unloads first)")
    g.add_argument("--max-memory", type=parse_bytes, default=None, metavar="BYTES",
                   help="memory the loaded models may take (weights + KV estimate), e.g. 8G")
    g.add_argument("--log-level", default="info",
                   choices=["critical", "error", "warning", "info", "debug"])
    r = srv.add_argument_group("scale-out (Ray Serve; docs/guide/scaling-out.md)")
    r.add_argument("--replicas", type=int, default=0, metavar="N",
                   help="run N engine replicas on a local Ray cluster behind a cache-affinity router")
    r.add_argument("--router", choices=["affinity", "pow2"], default="affinity",
                   help="affinity: longest cached prefix, sticky sessions, load (default); "
                        "pow2: Ray Serve's default power-of-two-choices")
    srv.set_defaults(func=cmd_serve)


def _served_names(args: argparse.Namespace) -> dict[str, str]:
    """Served name -> engine id: one bare model under --served-model-name, else each under its NAME."""
    models = catalog(args)
    if len(models) == 1 and models[0].name == MODEL_ID:
        return {args.served_model_name: MODEL_ID}
    return {m.name: m.name for m in models}


def server_config(args: argparse.Namespace, cache_metrics: Any = None) -> Any:
    from kvllama.server import ServerConfig

    names = _served_names(args)
    limits = MediaLimits(max_media=args.max_media, max_bytes=args.max_media_bytes,
                         max_pixels=args.max_image_pixels)
    ttl = parse_keep_alive(args.responses_ttl)
    if ttl <= 0 or args.responses_max < 1:
        raise SystemExit("--responses-ttl must be a positive duration and --responses-max at least 1")
    body = args.max_body_bytes
    if body is None:
        with_media = getattr(args, "mmproj", None) or any(m.options.get("mmproj") for m in catalog(args))
        body = (64 if with_media else 4) * 1024 * 1024
    return ServerConfig(models=names, default_model=next(iter(names)), api_key=args.api_key,
                        max_tokens_limit=args.max_tokens_limit, max_body_bytes=body, media_limits=limits,
                        responses_max_count=args.responses_max,
                        responses_max_age=ttl, priority_header=args.priority_header,
                        max_queue=None if args.max_queue < 0 else args.max_queue,
                        cache_metrics_provider=cache_metrics)


def cmd_serve(args: argparse.Namespace) -> int:
    from kvllama.server import serve
    from kvllama.server.runner import listening_banner

    if args.replicas:
        if len(catalog(args)) > 1:
            raise SystemExit("--replicas serves one model: give a single --model")
        return serve_replicas(args, server_config(args))
    with load(args) as engine:
        config = server_config(args, engine.cache_metrics)
        known = {k.id: k for k in engine.known_models()}
        loaded = {info.id: info for info in engine.list_models()}
        models = {}
        for name, model_id in config.models.items():
            k, info = known[model_id], loaded.get(model_id)
            if info is not None:
                models[name] = f"{info.description or info.architecture} ({info.path})"
            else:
                path = k.path or default_model_path()
                models[name] = f"{k.architecture} {k.quant} ({path}; loads on first use)"

        def announce(url: str) -> None:
            banner = listening_banner(url, models, api_key=args.api_key is not None, bind=args.host,
                                      try_model="smollm2")
            print(banner, flush=True)

        serve(engine, config, host=args.host, port=args.port, log_level=args.log_level, on_listening=announce)
    return 0
