"""A tiny random-weight audio projector (type ``ultravox``) for the default Gemma 3 270M.

Why ultravox: of the audio projectors the vendored mtmd supports for a plain
decoder text model, the Whisper-encoder family (ultravox, qwen2a, voxtral,
glma, meralion, musicflamingo: clip.cpp ``clip_graph_whisper_enc``, mtmd-audio.cpp
``mtmd_audio_preprocessor_whisper``) needs the least: a log-mel front end that
mtmd computes itself (the mel filterbank is built from ``num_mel_bins``, no
filter tensors), two conv1d layers, a standard pre-LN transformer and a small
projector. Among those, ultravox is the only one whose token count per chunk is
set by the file (``clip.audio.projector.stack_factor``): qwen2a always gives
750 tokens per chunk, which would make every audio prompt long on a 270M model;
and ultravox adds no begin/end marker text around the audio chunk (mtmd.cpp
``init_audio``: qwen2a wraps it in ``<|audio_bos|>``/``<|audio_eos|>``,
voxtral starts it with ``[BEGIN_AUDIO]``; neither is a Gemma token).

Preprocessing (fixed by mtmd for these types, clip.cpp ``load_hparams``):
16 kHz mono, n_fft 400, hop 160, and Whisper's 30 s chunks: the samples are
padded with 30 s of silence and cut into 3000-frame mel chunks, dropping the
last partial one. So any clip up to 30 s is exactly one chunk, and a chunk
becomes ``1500 / stack_factor`` tokens (conv stride 2, then frames stacked;
``clip_n_output_tokens``). ``stack_factor`` must divide 1500: otherwise the
graph (which pads 1500 up to a multiple) yields one row more than the count
mtmd reserved, and ``clip_encode`` aborts the whole process
("Invalid number of output tokens", clip.cpp; tried with 8, ultravox's usual
value). The default 25 gives 60 tokens per chunk.

Metadata: ``clip.has_audio_encoder``, ``clip.projector_type = ultravox``,
``clip.audio.{embedding_length, feed_forward_length, block_count,
attention.head_count, attention.layer_norm_epsilon, projection_dim,
num_mel_bins, projector.stack_factor}`` (stack_factor is required for
ultravox). Tensors (clip.cpp ``load_tensors`` case ``PROJECTOR_TYPE_ULTRAVOX``
and the per-layer loop; ggml ``ne`` = numpy shape reversed):
``a.conv1d.1.weight`` ``[3, n_mel, h]`` and ``a.conv1d.2.weight`` ``[3, h, h]``
(F16) with biases ``[1, h]`` (broadcast over time, as the Whisper converter
writes them), ``a.position_embd.weight`` ``[h, 1500]``, per block
``a.blk.N.{attn_q, attn_k, attn_v, attn_out, ffn_up, ffn_down}`` with biases
except ``attn_k`` (whisper-enc.cpp asserts it has none) and ``ln1``/``ln2``,
``a.post_ln``, then the projector ``mm.a.norm_pre.weight`` ``[h * stack]``,
``mm.a.mlp.1.weight`` ``[h * stack, 2 * proj]`` (SwiGLU: half gate, half
value), ``mm.a.norm_mid.weight`` ``[proj]`` and ``mm.a.mlp.2.weight``
``[proj, n_embd]``, whose ``ne[1]`` mtmd checks against the text model's width.
The outputs mean nothing (see ``synthetic_projector``); they are finite,
depend on the audio, and repeat exactly for the same audio.
"""

from __future__ import annotations

from pathlib import Path

from kvllama.bench.synthetic_projector import Parts, Weights, add_encoder_blocks, encoder_keys, write_parts

SAMPLE_RATE = 16_000  # mtmd's whisper preprocessing rate (mtmd_get_audio_sample_rate)
CHUNK_SECONDS = 30  # Whisper's window: any clip up to this long is one chunk
_CHUNK_POSITIONS = 1500  # 3000 mel frames per chunk after the stride-2 conv


def audio_tokens_per_chunk(stack_factor: int = 25) -> int:
    """Tokens per 30 s chunk (so per clip of up to 30 s) of an ultravox projector: ``1500 / stack_factor``."""
    if stack_factor < 1 or _CHUNK_POSITIONS % stack_factor:
        raise ValueError(f"stack_factor ({stack_factor}) must divide {_CHUNK_POSITIONS}")
    return _CHUNK_POSITIONS // stack_factor


def audio_parts(*, n_embd: int = 640, seed: int = 0, stack_factor: int = 25, n_mel: int = 80,
                hidden: int = 64, n_ff: int = 128, n_layer: int = 1, n_head: int = 4,
                proj_hidden: int = 128) -> Parts:
    """The ultravox audio keys and tensors (see the module docstring for the layout)."""
    audio_tokens_per_chunk(stack_factor)  # validates it
    if not 1 <= n_mel <= 256:
        raise ValueError(f"n_mel ({n_mel}) must be in [1, 256] (clip.cpp load_hparams)")
    parts = Parts(keys=[("clip.has_audio_encoder", True)])
    parts.keys += encoder_keys("audio", n_embd=n_embd, hidden=hidden, n_ff=n_ff, n_layer=n_layer,
                               n_head=n_head)
    parts.keys += [("clip.audio.num_mel_bins", n_mel), ("clip.audio.projector.stack_factor", stack_factor)]
    w = Weights(seed)
    parts.add("a.conv1d.1.weight", w.matrix(hidden, n_mel, 3))
    parts.add("a.conv1d.1.bias", w.dense(hidden, 1))
    parts.add("a.conv1d.2.weight", w.matrix(hidden, hidden, 3))
    parts.add("a.conv1d.2.bias", w.dense(hidden, 1))
    parts.add("a.position_embd.weight", w.dense(_CHUNK_POSITIONS, hidden))
    add_encoder_blocks(parts, w, "a", n_layer, hidden, n_ff, k_bias=False)
    stacked = hidden * stack_factor
    parts.add("mm.a.norm_pre.weight", w.ones(stacked))
    parts.add("mm.a.mlp.1.weight", w.matrix(2 * proj_hidden, stacked))
    parts.add("mm.a.norm_mid.weight", w.ones(proj_hidden))
    parts.add("mm.a.mlp.2.weight", w.matrix(n_embd, proj_hidden))
    return parts


def write_audio_projector(path: str | Path, *, n_embd: int = 640, seed: int = 0, stack_factor: int = 25,
                          n_mel: int = 80, hidden: int = 64, n_ff: int = 128, n_layer: int = 1,
                          n_head: int = 4, proj_hidden: int = 128) -> Path:
    """Write an ultravox audio projector for a text model of width ``n_embd``; returns ``path``.

    Each clip of up to 30 s becomes :func:`audio_tokens_per_chunk` ``(stack_factor)`` tokens (60 by default).
    """
    parts = audio_parts(n_embd=n_embd, seed=seed, stack_factor=stack_factor, n_mel=n_mel, hidden=hidden,
                        n_ff=n_ff, n_layer=n_layer, n_head=n_head, proj_hidden=proj_hidden)
    parts.keys.insert(0, ("clip.projector_type", "ultravox"))
    return write_parts(path, f"synthetic ultravox audio projector (seed {seed})", [parts])
