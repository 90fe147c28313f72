"""``Engine.end_session`` and ``Engine.fork_session``: sticky sessions' slots, from outside a request.

A session's sequence stays in its slot between turns (engine/sessions.py);
these two let a client free that slot early or start a second conversation
from the same live KV. Both refuse while a request of the session runs.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from kvllama.errors import SessionBusyError, UnknownModelError

if TYPE_CHECKING:
    from kvllama.models.loaded import LoadedModel


class SessionMethods:
    """Mixed into :class:`~kvllama.api.engine.Engine`."""

    _lock: threading.Lock
    _models: dict[str, LoadedModel]
    _busy_sessions: set[tuple[str, str | None, str]]

    def _model(self, model_id: str) -> LoadedModel:  # pragma: no cover - Engine's
        raise NotImplementedError

    def end_session(
        self, session_id: str, model_id: str | None = None, cache_salt: str | None = None
    ) -> bool:
        """Release a sticky session's sequence slot (saving it to the cache first).

        ``cache_salt`` names the tenant the session belongs to. Returns False if
        no model holds that session idle (unknown, or a request of it is still
        running: then ``SessionBusyError``).
        """
        with self._lock:
            models = [self._models[model_id]] if model_id in self._models else list(self._models.values())
            if model_id is not None and model_id not in self._models:
                raise UnknownModelError(model_id)
            busy = any((m.id, cache_salt, session_id) in self._busy_sessions for m in models)
        if busy:
            raise SessionBusyError(session_id)
        return any(m.loop.end_session(session_id, cache_salt) for m in models)

    def fork_session(self, model_id: str, session_id: str, new_session_id: str,
                     cache_salt: str | None = None) -> None:
        """A new sticky session that starts as a copy of an idle one (its live KV copied once).

        Both go on independently: the next turns of either prefill only their
        own new tokens. Raises SessionBusyError (a request of either is running),
        UnknownSessionError, SessionConflictError or NoFreeSlotError.
        """
        model = self._model(model_id)
        with self._lock:
            for sid in (session_id, new_session_id):
                if (model.id, cache_salt, sid) in self._busy_sessions:
                    raise SessionBusyError(sid)
        model.loop.fork_session(session_id, new_session_id, cache_salt)
