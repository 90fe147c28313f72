"""Loading llama.cpp once, and routing its log lines into Python ``logging``.

This package (``kvllama.native``) is the only place that touches ctypes.
llama-cpp-python's own log filter maps levels wrongly (docs/llama-cpp-facts.md),
so we install our own callback and keep a reference to it: if the ctypes
function object were collected, llama.cpp would call freed memory.
"""

from __future__ import annotations

import logging
import threading
from types import ModuleType
from typing import Any

log = logging.getLogger("kvllama.llama_cpp")

# ggml_log_level: NONE 0, DEBUG 1, INFO 2, WARN 3, ERROR 4, CONT 5. llama.cpp's
# INFO is chatty (every tensor, every context setting), so it goes to DEBUG.
_LEVELS = {1: logging.DEBUG, 2: logging.DEBUG, 3: logging.WARNING, 4: logging.ERROR}

_lock = threading.Lock()
_state: dict[str, Any] = {}


def llama() -> ModuleType:
    """The ``llama_cpp`` module with the backend initialised and logging installed."""
    module = _state.get("module")
    if module is not None:
        return module
    with _lock:
        if "module" not in _state:
            import llama_cpp

            callback = llama_cpp.llama_log_callback(_forward_log)
            llama_cpp.llama_log_set(callback, None)
            llama_cpp.llama_backend_init()
            _state["callback"] = callback
            _state["last_level"] = logging.DEBUG
            _state["module"] = llama_cpp
    return _state["module"]


def log_callback() -> Any:
    """The installed ctypes log callback (libmtmd takes the same one); alive for the process."""
    llama()
    return _state["callback"]


def _forward_log(level: int, text: bytes | None, _user_data: object) -> None:
    # Called from llama.cpp threads; must never raise into C.
    try:
        if level == 5:  # CONT: continue the previous line at its level
            py_level = _state.get("last_level", logging.DEBUG)
        else:
            py_level = _LEVELS.get(level, logging.DEBUG)
            _state["last_level"] = py_level
        if text and log.isEnabledFor(py_level):
            message = text.decode("utf-8", errors="replace").rstrip("\n")
            if message:
                log.log(py_level, "%s", message)
    except Exception:  # pragma: no cover - defensive, logging must not crash C code
        pass


def package_version() -> str:
    from importlib.metadata import version

    return version("llama_cpp_python")
