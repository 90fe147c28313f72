"""The floor in a process of its own, with llama.cpp's stock kernel settings.

ggml reads its kernel switches (``GGML_CPU_TILED_MM``,
``GGML_CPU_TILED_MM_FORCE``) once per process, at the first matmul. kvllama
may run with them changed (see ``kvllama.native.kernels``), and a floor in the
same process would inherit that; the bench's floor is bare llama.cpp as it
ships, so it runs in a child started without those variables.
"""

from __future__ import annotations

import multiprocessing as mp
import os
from collections.abc import Sequence
from typing import Any

from kvllama.options import ModelOptions

# Variables that change ggml's CPU kernels; the child starts without them.
KERNEL_VARIABLES = ("GGML_CPU_TILED_MM", "GGML_CPU_TILED_MM_FORCE")


def _serve(conn: Any, path: str, options: ModelOptions) -> None:
    from kvllama.bench.floor import Floor

    with Floor(path, options) as floor:
        conn.send(("ready", None))
        while True:
            message = conn.recv()
            if message is None:
                return
            if message[0] == "tokenize":
                conn.send(("tokens", [floor.model.tokenize(t, True, False) for t in message[1]]))
                continue
            _, prompts, max_tokens = message
            conn.send(("result", floor.run(prompts, max_tokens)))


class FloorProcess:
    """``Floor``'s ``run`` interface, answered by a child process."""

    def __init__(self, path: str, options: ModelOptions) -> None:
        ctx = mp.get_context("spawn")
        self._conn, child = ctx.Pipe()
        saved = {k: os.environ.pop(k) for k in KERNEL_VARIABLES if k in os.environ}
        try:
            self._proc = ctx.Process(target=_serve, args=(child, path, options), daemon=True)
            self._proc.start()
        finally:
            os.environ.update(saved)
        child.close()
        self._expect("ready")

    def _expect(self, kind: str) -> Any:
        try:
            got, value = self._conn.recv()
        except EOFError as exc:
            raise RuntimeError("the floor process exited; see its output above") from exc
        assert got == kind, got
        return value

    def run(self, prompts: Sequence[Sequence[int]], max_tokens: int) -> tuple[float, int, list[list[int]]]:
        self._conn.send(("run", [list(p) for p in prompts], max_tokens))
        return self._expect("result")

    def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        """With the model's special tokens (BOS), as a server tokenizes a text prompt."""
        self._conn.send(("tokenize", list(texts)))
        return self._expect("tokens")

    def close(self) -> None:
        if self._proc.is_alive():
            self._conn.send(None)
            self._proc.join(30)
        if self._proc.is_alive():
            self._proc.kill()

    def __enter__(self) -> FloorProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
