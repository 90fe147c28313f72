"""``kvllama bench media``: what an image (or audio clip) costs cold, and what the cache saves next turn.

Measured side by side in one process, per medium kind, each figure a median over ``runs``:

* *prepare*: ``resolve_request`` on the turn's messages (template, the medium decoded and
  preprocessed by mtmd, tokens). Every request pays it, warm ones too, before it is
  submitted, so it is not part of any TTFT below.
* *encode*: the projector encoding the medium alone (one ``NativeProjector.encode`` call on an
  idle engine: no text model, no cache), so it can be set against the TTFTs.
* *cold*: TTFT of a one-medium chat turn on an engine with no KV cache and no kept slots:
  encode + the medium's positions + the text prefill + one sample.
* *warm*: TTFT of the next turn of a conversation (turn 1 + its reply + a follow-up question)
  on an engine with a RAM-only cache and ``keep_finished=False``, so the medium's positions
  come back from turn 1's cache row, not from a slot; its ``cache_delta.read`` must reach the
  medium's end, and ``media_encoded`` must not grow.
* *turn 2 cold*: the same turn-2 prompt on the cache-less engine, so the saving on an
  equal prompt is visible too (cold/warm sets a first turn against the turn after it: what a
  user waits for on each).

Every medium is new to the engine that sees it (a fresh seed per run), so the projector's
in-memory embedding memo (media/projector.py) never answers. The order of the cold and the
warm measurements alternates between runs, because this machine's speed drifts.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kvllama.api.engine import Engine
from kvllama.errors import InvalidOptionError
from kvllama.kvcache import CacheConfig
from kvllama.media.layout import MediaSpan
from kvllama.request import ChatInput, GenerationRequest
from kvllama.results import CompletionResult

MODEL = "bench"
N_SEQ_MAX = 2
N_CTX_SEQ = 4096
REPLY_TOKENS = 8  # turn 1's reply, carried into turn 2 as the assistant message
FOLLOW_UP = "Thank you. Now tell me, in one short sentence, what stands out most in it."
SYNTHETIC_NOTE = ("Note: the synthetic projector's encoders are tiny (the image one a 2-block, 64-wide "
                  "random ViT on 128x128 pixels; a real Gemma 3 SigLIP encoder has ~400M parameters "
                  "on 896x896), so with it the encode share is not representative: give --model and "
                  "--mmproj to measure real encoders.")
_WORDS = ("river", "stone", "lantern", "harbor", "meadow", "quartz", "violet", "engine", "ledger", "orchard",
          "signal", "canyon", "mirror", "falcon", "pepper", "thunder", "garden", "silver", "anchor", "marble")
Progress = Callable[[str], None]
Messages = list[dict[str, Any]]


@dataclass(frozen=True)
class MediaKind:
    """One medium kind: its name, how it is described, and its chat content part for a seed."""

    name: str  # "image" or "audio"
    detail: str  # "640x480", "5 s"
    part: Callable[[int], dict[str, Any]]


def image_kind(width: int, height: int) -> MediaKind:
    from kvllama.bench.media_samples import data_url, png

    return MediaKind("image", f"{width}x{height}", lambda seed: {
        "type": "image_url", "image_url": {"url": data_url(png(width, height, seed))}})


def audio_kind(seconds: float) -> MediaKind:
    from kvllama.bench.media_samples import b64, wav

    return MediaKind("audio", f"{seconds:g} s", lambda seed: {
        "type": "input_audio", "input_audio": {"data": b64(wav(seconds, seed)), "format": "wav"}})


def parse_size(text: str) -> tuple[int, int]:
    """``WxH`` (e.g. 640x480) as (width, height); an argparse type, so a bad value is a usage error."""
    width, sep, height = text.lower().partition("x")
    try:
        w, h = int(width), int(height)
    except ValueError:
        w = h = 0
    if not sep or w < 1 or h < 1 or w > 8192 or h > 8192:
        raise argparse.ArgumentTypeError(f"{text!r}: give WIDTHxHEIGHT, e.g. 640x480 (1 to 8192 each)")
    return w, h


def text_of(words: int, seed: int) -> str:
    """``words`` words of filler that differ per seed (the text part of the user message)."""
    return " ".join(_WORDS[(seed * 7 + j * 3 + j * j) % len(_WORDS)] for j in range(words))


def run_bench_media(
    model: str | None, mmproj: str | None, *, runs: int = 5, image_size: tuple[int, int] = (640, 480),
    text_words: int = 40, audio: bool = False, audio_seconds: float = 5.0,
    options: dict[str, Any] | None = None, progress: Progress | None = None,
) -> dict[str, Any]:
    """Encode, cold and warm figures per medium kind; a JSON-ready report (``format_report`` prints it)."""
    for name, value in (("runs", runs), ("text_words", text_words), ("audio_seconds", audio_seconds)):
        if value <= 0:
            raise InvalidOptionError(name, value, "more than 0")
    synthetic = mmproj is None
    if synthetic:
        if model is not None:
            raise InvalidOptionError("mmproj", None, "a projector GGUF made for --model (the synthetic "
                                     "projector fits only the embedded default model)")
        from kvllama.bench.synthetic_projector import cached_multimodal_projector

        mmproj = str(cached_multimodal_projector())  # images and audio: the same encoders either way
    kinds = [image_kind(*image_size)] + ([audio_kind(audio_seconds)] if audio else [])
    say = progress or (lambda _line: None)
    cold, warm = _open(model, mmproj, options, cached=False), None
    try:
        warm = _open(model, mmproj, options, cached=True)
        info = warm.model_info(MODEL)
        missing = [k.name for k in kinds if k.name not in info.modalities]
        if missing:
            raise InvalidOptionError("mmproj", mmproj, f"a projector that takes {' and '.join(missing)}")
        rows = [_measure_kind(cold, warm, kind, i, runs, text_words, say) for i, kind in enumerate(kinds)]
    finally:
        cold.close()
        if warm is not None:
            warm.close()
    return {"benchmark": "media", "model": info.path, "mmproj": mmproj, "synthetic_projector": synthetic,
            "runs": runs, "text_words": text_words, "rows": rows}


def _open(model: str | None, mmproj: str, options: dict[str, Any] | None, *, cached: bool) -> Engine:
    """An engine with no kept slots: a RAM-only cache (warm), or none at all (cold)."""
    engine = Engine(cache=CacheConfig(shm_dir=None, disk_dir=None) if cached else None)
    try:
        engine.load_model(MODEL, model, mmproj=mmproj, **(options or {}), keep_finished=False,
                          n_seq_max=N_SEQ_MAX, n_ctx=N_SEQ_MAX * N_CTX_SEQ)
    except BaseException:
        engine.close()
        raise
    return engine


def _turn1(kind: MediaKind, seed: int, words: int) -> Messages:
    return [{"role": "user", "content": [kind.part(seed), {"type": "text", "text": text_of(words, seed)}]}]


def _turn2(turn1: Messages, reply: str) -> Messages:
    return [*turn1, {"role": "assistant", "content": reply}, {"role": "user", "content": FOLLOW_UP}]


def _spans(engine: Engine, messages: Messages) -> tuple[list[MediaSpan], int, float]:
    """The prompt's media spans (a long clip may be several), its length in tokens, and the seconds
    preparing it took (template, media decoded and preprocessed, tokens): a request pays that
    before it is submitted, so it is not in its TTFT."""
    started = time.perf_counter()
    request = engine.resolve_request(MODEL, GenerationRequest.build(chat=ChatInput.of(messages)))
    prepare = time.perf_counter() - started
    assert request.layout is not None, "a prompt with media has a layout"
    return list(request.layout.spans), request.layout.n_prompt, prepare


def _encode_seconds(engine: Engine, spans: list[MediaSpan]) -> float:
    """The projector alone on every span of one medium: the one native call the decode loop makes
    to encode (MediaPrompter.embeddings), called here directly on an idle engine, without the memo."""
    media = engine.models.get(MODEL).backend.media
    assert media is not None, "the model was loaded with a projector"
    started = time.perf_counter()
    for span in spans:
        media.native.encode(span.chunk, media.n_embd)  # type: ignore[arg-type]
    return time.perf_counter() - started


def _ask(engine: Engine, messages: Messages, max_tokens: int = 1) -> CompletionResult:
    result = engine.chat(MODEL, messages, max_tokens=max_tokens, temperature=0)
    deadline = time.monotonic() + 60.0  # wait for the writer pool: the next turn must find the row,
    while engine.cache is not None and engine.cache.pending_keys() and time.monotonic() < deadline:
        time.sleep(0.005)  # and the next measurement must not share the CPU with a save
    return result


def _cold_run(cold: Engine, kind: MediaKind, seed: int, words: int) -> dict[str, Any]:
    """Encode alone, then the same (still unseen) medium's first turn on the cache-less engine."""
    turn1 = _turn1(kind, seed, words)
    spans, n_prompt, prepare = _spans(cold, turn1)
    encode = _encode_seconds(cold, spans)
    result = _ask(cold, turn1)
    return {"prepare": prepare, "encode": encode, "cold": result.stats.time_to_first_token or 0.0,
            "cold_prefill": result.stats.prefill_seconds, "media_tokens": sum(s.n_tokens for s in spans),
            "turn1_tokens": n_prompt}


def _warm_run(cold: Engine, warm: Engine, kind: MediaKind, seed: int, words: int) -> dict[str, Any]:
    """Turn 1 then turn 2 on the cached engine; turn 2 again on the cache-less one (new to it too)."""
    turn1 = _turn1(kind, seed, words)
    first = _ask(warm, turn1, REPLY_TOKENS)
    turn2 = _turn2(turn1, first.reply)
    spans, n_prompt, prepare = _spans(warm, turn2)
    before = warm.model_info(MODEL)
    second = _ask(warm, turn2)
    after = warm.model_info(MODEL)
    sources = {k: v - before.prompt_reuse["requests"].get(k, 0)
               for k, v in after.prompt_reuse["requests"].items()}
    return {"warm_prepare": prepare, "warm": second.stats.time_to_first_token or 0.0,
            "warm_read": second.cache_delta.read, "media_end": spans[-1].end, "turn2_tokens": n_prompt,
            "warm_encodes": after.media_encoded - before.media_encoded,
            "warm_source": next((k for k, v in sources.items() if v > 0), "none"),
            "turn2_cold": _ask(cold, turn2).stats.time_to_first_token or 0.0}


def _measure_kind(cold: Engine, warm: Engine, kind: MediaKind, index: int, runs: int, words: int,
                  say: Progress) -> dict[str, Any]:
    """Warm both engines up on a throwaway medium, then ``runs`` alternating cold/warm runs."""
    base = 1_000 * (index + 1)
    for engine in (cold, warm):  # one-off allocations (the encoder's graph, the KV buffers)
        _ask(engine, _turn1(kind, base + 999, words), 2)
    samples: list[dict[str, Any]] = []
    for i in range(runs):
        seed = base + 2 * i
        if i % 2 == 0:
            c = _cold_run(cold, kind, seed, words)
            w = _warm_run(cold, warm, kind, seed + 1, words)
        else:
            w = _warm_run(cold, warm, kind, seed + 1, words)
            c = _cold_run(cold, kind, seed, words)
        samples.append({**c, **w})
        say(f"[{kind.name}] run {i + 1}/{runs}: encode {c['encode'] * 1e3:.1f} ms, cold {c['cold']:.3f} s, "
            f"warm {w['warm']:.3f} s (read {w['warm_read']}/{w['media_end']} from {w['warm_source']}, "
            f"{w['warm_encodes']} encodes), turn 2 cold {w['turn2_cold']:.3f} s")
    return summarise(kind.name, kind.detail, samples)


def summarise(kind: str, detail: str, samples: list[dict[str, Any]]) -> dict[str, Any]:
    """One report row from the runs' samples (seconds in, milliseconds out): medians and ratios."""

    def median_ms(key: str) -> float:
        return round(statistics.median(s[key] for s in samples) * 1e3, 2)

    encode, cold, warm, turn2_cold = (median_ms(k) for k in ("encode", "cold", "warm", "turn2_cold"))
    warm_read = min(s["warm_read"] for s in samples)
    media_end = max(s["media_end"] for s in samples)
    encodes = sum(s["warm_encodes"] for s in samples)
    return {
        "kind": kind, "detail": detail, "runs": len(samples),
        "media_tokens": samples[0]["media_tokens"], "turn1_tokens": samples[0]["turn1_tokens"],
        "turn2_tokens": samples[0]["turn2_tokens"],
        "prepare_ms": median_ms("prepare"), "warm_prepare_ms": median_ms("warm_prepare"),
        "encode_ms": encode, "cold_ttft_ms": cold, "cold_prefill_ms": median_ms("cold_prefill"),
        "warm_ttft_ms": warm, "turn2_cold_ttft_ms": turn2_cold,
        "cold_over_warm": round(cold / warm, 2) if warm else None,
        "turn2_cold_over_warm": round(turn2_cold / warm, 2) if warm else None,
        "encode_share": round(encode / cold, 3) if cold else None,
        "warm_read_min": warm_read, "media_end": media_end, "warm_covers_media": warm_read >= media_end,
        "warm_encodes": encodes, "warm_sources": sorted({s["warm_source"] for s in samples}),
        "samples": [{k: round(v, 5) if isinstance(v, float) else v for k, v in s.items()} for s in samples],
    }


def format_report(report: dict[str, Any]) -> str:
    """The rows as a plain-text table (Markdown-compatible), like ``kvllama bench cache``'s."""
    projector = "synthetic (tiny random encoder)" if report["synthetic_projector"] else report["mmproj"]
    out = [f"media in prompts: encode alone, cold first turn, warm next turn (ms, medians of "
           f"{report['runs']} runs; {report['text_words']} words of text per user message)",
           f"model {report['model']}, projector {projector}", "",
           "| medium | tokens (medium / turn 1 / turn 2) | prepare (turn 1 / 2) | encode | cold TTFT "
           "| warm TTFT | turn 2 cold | cold/warm | turn 2 cold/warm | encode share of cold |",
           "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in report["rows"]:
        share = "-" if r["encode_share"] is None else f"{r['encode_share']:.0%}"
        out.append(f"| {r['kind']} {r['detail']} | {r['media_tokens']} / {r['turn1_tokens']} / "
                   f"{r['turn2_tokens']} | {r['prepare_ms']:.1f} / {r['warm_prepare_ms']:.1f} | "
                   f"{r['encode_ms']:.1f} | {r['cold_ttft_ms']:.1f} | "
                   f"{r['warm_ttft_ms']:.1f} | {r['turn2_cold_ttft_ms']:.1f} | {_x(r['cold_over_warm'])} | "
                   f"{_x(r['turn2_cold_over_warm'])} | {share} |")
    out.append("")
    for r in report["rows"]:
        covered = "covers" if r["warm_covers_media"] else "does NOT cover"
        grew = "did not grow" if r["warm_encodes"] == 0 else f"grew by {r['warm_encodes']}"
        out.append(f"{r['kind']}: the warm turn reused at least {r['warm_read_min']} prompt tokens (from "
                   f"{', '.join(r['warm_sources'])}), which {covered} the medium (it ends at "
                   f"{r['media_end']}); media_encoded {grew} on warm turns.")
    if report["synthetic_projector"]:
        out += ["", SYNTHETIC_NOTE]
    return "\n".join(out)


def _x(ratio: float | None) -> str:
    return "-" if ratio is None else f"{ratio:.2f}x"


def add_bench_media_parser(bench_sub: Any) -> None:
    """Register ``kvllama bench media`` (called from cli.py's ``_add_bench_parsers``)."""
    p = bench_sub.add_parser(
        "media", help="an image (or audio clip) in a prompt: encode alone, cold TTFT, warm next-turn TTFT",
        description="Per medium: the projector encoding it alone, the TTFT of a one-medium chat turn with "
                    "no cache and no kept slots, and the TTFT of the next turn restored from a RAM cache "
                    "row (keep_finished off), with cold/warm and the encode share of the cold TTFT. "
                    "Without --mmproj it uses the synthetic projector for the embedded default model.")
    p.add_argument("--model", "-m", default=None, help="GGUF path (default: the embedded Gemma 3 270M)")
    p.add_argument("--mmproj", default=None,
                   help="projector GGUF for --model (default: the synthetic one for the default model)")
    p.add_argument("--runs", type=int, default=5, help="runs per figure (medians)")
    p.add_argument("--image-size", type=parse_size, default=(640, 480), metavar="WxH",
                   help="image width x height in pixels (default: 640x480)")
    p.add_argument("--text-words", type=int, default=40, help="words of text in the first user message")
    p.add_argument("--audio", action="store_true", help="also measure an audio clip")
    p.add_argument("--audio-seconds", type=float, default=5.0, help="length of the audio clip")
    p.add_argument("--n-threads", type=int, default=None, help="threads (default: llama.cpp's)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    p.set_defaults(func=_cmd_bench_media)


def _cmd_bench_media(args: argparse.Namespace) -> int:
    options = {"n_threads": args.n_threads} if args.n_threads is not None else {}
    report = run_bench_media(args.model, args.mmproj, runs=args.runs, image_size=args.image_size,
                             text_words=args.text_words, audio=args.audio, audio_seconds=args.audio_seconds,
                             options=options, progress=lambda line: print(line, file=sys.stderr, flush=True))
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 0
