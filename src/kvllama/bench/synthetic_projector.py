"""Tiny random-weight multimodal projectors (mmproj GGUFs) for the default Gemma 3 270M.

Why: the engine's image and audio paths need a projector that libmtmd loads
beside the text model, and no small vision or audio model is published on PyPI
(the real Gemma 3 mmproj is several hundred MB and is not packaged). So tests write their
own: seeded random weights in exactly the layout llama.cpp's ``tools/mtmd``
loader reads, small enough to write in milliseconds and to encode an image in
a few milliseconds on two CPU cores. The same seed always gives the same bytes.

What the outputs prove, and what they don't: the embeddings are meaningless, so
whatever the text model writes after them is gibberish. They do exercise the
real path end to end: mtmd loads the file against the real text model (it
checks that the projector's output width equals the model's ``n_embd``),
tokenizes text and media into text/image/audio chunks, preprocesses the media
(resize + normalise, or log-mel), runs a real encoder graph, and hands back
``n_tokens x n_embd`` finite floats that depend on the media and are the same
for the same media. That is enough to test media-aware caching, exact resume,
refusals and accounting; it says nothing about answer quality.

Image projector: type ``gemma3`` (``PROJECTOR_TYPE_GEMMA3``, clip-impl.h),
the Gemma 3 layout — a SigLIP ViT (``models/siglip.cpp``: ``build_inp`` conv
patch embedding + learned positions, ``build_vit`` with LayerNorm, GELU FFN,
post-LN), then a ``n_merge x n_merge`` average pool, an RMS norm
(``mm.soft_emb_norm``) and the ``mm.input_projection`` to the text width.
Image tokens = ``(image_size / (patch_size * n_merge)) ** 2`` (clip.cpp
``clip_n_output_tokens``): every image is resized to ``image_size`` square,
so the count is fixed per projector; the defaults 128 / 8 / 2 give 64.
mtmd wraps each image chunk in the text ``<start_of_image>`` ...
``<end_of_image>`` (mtmd.cpp ``init_vision``), and Gemma 3 image tokens are
decoded with non-causal attention (``mtmd_decode_use_non_causal``).

Metadata (clip.cpp ``clip_model_loader`` / ``load_hparams``; required unless
noted): ``clip.has_vision_encoder``, ``clip.projector_type``,
``clip.vision.{embedding_length, feed_forward_length, block_count,
attention.head_count, attention.layer_norm_epsilon, projection_dim,
image_size, patch_size, image_mean, image_std}``, optional
``clip.vision.projector.scale_factor`` (n_merge, default 4) and
``clip.use_gelu``. Tensors (``load_tensors``, names from clip-impl.h,
ggml ``ne`` = numpy shape reversed): ``v.patch_embd.weight``
``[p, p, 3, h]`` + ``.bias``, ``v.position_embd.weight`` ``[h, n_patches]``,
per block ``v.blk.N.{attn_q, attn_k, attn_v, attn_out, ffn_up, ffn_down}``
weights and biases and ``ln1``/``ln2`` weight+bias, ``v.post_ln``,
``mm.soft_emb_norm.weight`` ``[h]`` and ``mm.input_projection.weight``
``[n_embd, h]`` (transposed in the graph). ``n_ff`` must differ from ``h``:
the loader swaps ``ffn_up``/``ffn_down`` of gemma3 files whose down matrix has
``ne[0] == h`` (old converters wrote them the wrong way round).

The audio projector (type ``ultravox``) is in ``synthetic_audio_projector``;
``write_multimodal_projector`` puts both in one file.
2-D+ weights are F16 (as the converters write them), 1-D tensors and the
position embeddings F32.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import gguf
import numpy as np

from kvllama.bench.synthetic_lora import write_and_close
from kvllama.bench.tiny_model import cached_model

# Bump when a recipe changes, so cached copies are rewritten.
RECIPE_VERSION = "v1"
WEIGHT_STD = 0.05
ARCH = "clip"  # general.architecture of every mmproj the converters write


@dataclass
class Parts:
    """Metadata and tensors of one modality, in a fixed order; ``write_parts`` makes the file."""

    keys: list[tuple[str, object]] = field(default_factory=list)
    tensors: list[tuple[str, np.ndarray]] = field(default_factory=list)

    def add(self, name: str, array: np.ndarray) -> None:
        self.tensors.append((name, array))


class Weights:
    """Seeded random tensors: F16 matrices, unit/zero F32 norms, small F32 biases."""

    def __init__(self, seed: int, std: float = WEIGHT_STD) -> None:
        self.rng = np.random.default_rng(seed)
        self.std = np.float32(std)

    def matrix(self, *shape: int) -> np.ndarray:
        return (self.rng.standard_normal(shape, dtype=np.float32) * self.std).astype(np.float16)

    def dense(self, *shape: int) -> np.ndarray:
        """F32 random values (position embeddings, biases): added, not multiplied, in the graph."""
        return self.rng.standard_normal(shape, dtype=np.float32) * self.std

    @staticmethod
    def ones(n: int) -> np.ndarray:
        return np.ones(n, dtype=np.float32)

    @staticmethod
    def zeros(n: int) -> np.ndarray:
        return np.zeros(n, dtype=np.float32)


def add_encoder_blocks(parts: Parts, w: Weights, prefix: str, n_layer: int, hidden: int, n_ff: int,
                       k_bias: bool) -> None:
    """``{prefix}.blk.N.*`` for a pre-LN ViT/Whisper block (clip.cpp ``load_tensors`` per-layer loop).

    Whisper has no ``attn_k`` bias (whisper-enc.cpp asserts it is absent), SigLIP has one.
    """
    for il in range(n_layer):
        p = f"{prefix}.blk.{il}"
        for name in ("attn_q", "attn_k", "attn_v", "attn_out"):
            parts.add(f"{p}.{name}.weight", w.matrix(hidden, hidden))
            if name != "attn_k" or k_bias:
                parts.add(f"{p}.{name}.bias", w.dense(hidden))
        for ln in ("ln1", "ln2"):
            parts.add(f"{p}.{ln}.weight", w.ones(hidden))
            parts.add(f"{p}.{ln}.bias", w.zeros(hidden))
        parts.add(f"{p}.ffn_up.weight", w.matrix(n_ff, hidden))  # ne [h, n_ff]
        parts.add(f"{p}.ffn_up.bias", w.dense(n_ff))
        parts.add(f"{p}.ffn_down.weight", w.matrix(hidden, n_ff))  # ne [n_ff, h]
        parts.add(f"{p}.ffn_down.bias", w.dense(hidden))
    parts.add(f"{prefix}.post_ln.weight", w.ones(hidden))
    parts.add(f"{prefix}.post_ln.bias", w.zeros(hidden))


def encoder_keys(modality: str, *, n_embd: int, hidden: int, n_ff: int, n_layer: int,
                 n_head: int) -> list[tuple[str, object]]:
    """The ``clip.{vision,audio}.*`` sizes that ``load_hparams`` requires for every projector."""
    if hidden % n_head:
        raise ValueError(f"hidden ({hidden}) must be a multiple of n_head ({n_head})")
    if n_ff == hidden:
        raise ValueError("n_ff must differ from hidden (clip.cpp swaps square gemma3 FFNs)")
    if n_layer < 1:
        raise ValueError("n_layer must be at least 1")
    p = f"clip.{modality}"
    return [
        (f"{p}.embedding_length", hidden),
        (f"{p}.feed_forward_length", n_ff),
        (f"{p}.block_count", n_layer),
        (f"{p}.attention.head_count", n_head),
        (f"{p}.attention.layer_norm_epsilon", 1e-6),
        (f"{p}.projection_dim", n_embd),
    ]


def image_tokens(image_size: int = 128, patch_size: int = 8, n_merge: int = 2) -> int:
    """Tokens per image of a gemma3 projector: ``(image_size / (patch_size * n_merge)) ** 2``."""
    side, rem = divmod(image_size, patch_size * n_merge)
    if rem or side < 1:
        raise ValueError(f"image_size ({image_size}) must be a positive multiple of "
                         f"patch_size * n_merge ({patch_size * n_merge})")
    return side * side


def image_parts(*, n_embd: int = 640, seed: int = 0, image_size: int = 128, patch_size: int = 8,
                n_merge: int = 2, hidden: int = 64, n_ff: int = 128, n_layer: int = 2,
                n_head: int = 4) -> Parts:
    """The gemma3 vision keys and tensors (see the module docstring for the layout)."""
    image_tokens(image_size, patch_size, n_merge)  # validates the geometry
    n_patches = (image_size // patch_size) ** 2
    parts = Parts(keys=[("clip.has_vision_encoder", True), ("clip.use_gelu", True)])
    parts.keys += encoder_keys("vision", n_embd=n_embd, hidden=hidden, n_ff=n_ff, n_layer=n_layer,
                               n_head=n_head)
    parts.keys += [
        ("clip.vision.image_size", image_size),
        ("clip.vision.patch_size", patch_size),
        ("clip.vision.projector.scale_factor", n_merge),
        ("clip.vision.image_mean", [0.5, 0.5, 0.5]),
        ("clip.vision.image_std", [0.5, 0.5, 0.5]),
    ]
    w = Weights(seed)
    parts.add("v.patch_embd.weight", w.matrix(hidden, 3, patch_size, patch_size))
    parts.add("v.patch_embd.bias", w.dense(hidden))
    parts.add("v.position_embd.weight", w.dense(n_patches, hidden))
    add_encoder_blocks(parts, w, "v", n_layer, hidden, n_ff, k_bias=True)
    parts.add("mm.soft_emb_norm.weight", w.ones(hidden))
    parts.add("mm.input_projection.weight", w.matrix(hidden, n_embd))  # ne [n_embd, h]
    return parts


def write_image_projector(path: str | Path, *, n_embd: int = 640, seed: int = 0, image_size: int = 128,
                          patch_size: int = 8, n_merge: int = 2, hidden: int = 64, n_ff: int = 128,
                          n_layer: int = 2, n_head: int = 4) -> Path:
    """Write a gemma3 image projector for a text model of width ``n_embd``; returns ``path``.

    Each image becomes :func:`image_tokens` ``(image_size, patch_size, n_merge)`` tokens (64 by default).
    """
    parts = image_parts(n_embd=n_embd, seed=seed, image_size=image_size, patch_size=patch_size,
                        n_merge=n_merge, hidden=hidden, n_ff=n_ff, n_layer=n_layer, n_head=n_head)
    parts.keys.insert(0, ("clip.projector_type", "gemma3"))
    return write_parts(path, f"synthetic gemma3 image projector (seed {seed})", [parts])


def write_parts(path: str | Path, name: str, modalities: list[Parts]) -> Path:
    """One GGUF from the modalities' keys and tensors, written beside ``path`` and renamed into place,
    so a crash never leaves a truncated projector under the final name."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".mmproj-") as tmp:
        partial = Path(tmp) / out.name
        writer = gguf.GGUFWriter(partial, ARCH)
        writer.add_name(name)
        for parts in modalities:
            for key, value in parts.keys:
                _add_key(writer, key, value)
            for tensor_name, array in parts.tensors:
                writer.add_tensor(tensor_name, array)
        write_and_close(writer)
        os.replace(partial, out)
    return out


def _add_key(writer: gguf.GGUFWriter, key: str, value: object) -> None:
    """Typed as clip.cpp reads them: bools, u32 sizes, f32 epsilons, strings, f32 arrays."""
    if isinstance(value, bool):
        writer.add_bool(key, value)
    elif isinstance(value, int):
        writer.add_uint32(key, value)
    elif isinstance(value, float):
        writer.add_float32(key, value)
    elif isinstance(value, str):
        writer.add_string(key, value)
    elif isinstance(value, list):
        writer.add_array(key, [float(v) for v in value])
    else:
        raise TypeError(f"unsupported metadata value for {key}: {value!r}")


def write_multimodal_projector(path: str | Path, *, n_embd: int = 640, seed: int = 0) -> Path:
    """Both default projectors in one file (``clip.vision.projector_type`` = gemma3,
    ``clip.audio.projector_type`` = ultravox), for prompts that mix images and audio."""
    from kvllama.bench.synthetic_audio_projector import audio_parts

    vision = image_parts(n_embd=n_embd, seed=seed)
    vision.keys.insert(0, ("clip.vision.projector_type", "gemma3"))
    audio = audio_parts(n_embd=n_embd, seed=seed + 1)
    audio.keys.insert(0, ("clip.audio.projector_type", "ultravox"))
    return write_parts(path, f"synthetic gemma3 + ultravox projector (seed {seed})", [vision, audio])


def cached_image_projector() -> Path:
    """The default image projector (seed 0, width 640) under the user cache dir, written once."""
    return cached_model(f"synthetic-mmproj-gemma3-{RECIPE_VERSION}.gguf", write_image_projector)


def cached_audio_projector() -> Path:
    """The default audio projector (seed 0, width 640) under the user cache dir, written once."""
    from kvllama.bench.synthetic_audio_projector import write_audio_projector

    return cached_model(f"synthetic-mmproj-ultravox-{RECIPE_VERSION}.gguf", write_audio_projector)


def cached_multimodal_projector() -> Path:
    """The combined image + audio projector under the user cache dir, written once."""
    return cached_model(f"synthetic-mmproj-gemma3-ultravox-{RECIPE_VERSION}.gguf", write_multimodal_projector)
