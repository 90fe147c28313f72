"""Sticky sessions from outside a request: which are busy, and ending or forking one.

A session's sequence stays in its slot between turns (decoding/sessions.py).
One request of a session runs at a time: :meth:`Sessions.claim` marks it busy
when the request is prepared and the request's release hook frees it. The
engine's ``end_session`` and ``fork_session`` let a client free that slot
early or start a second conversation from the same live KV; both refuse
while a request of the session runs.
"""

from __future__ import annotations

from kvllama.api.models import ModelRegistry
from kvllama.decoding.request import Request
from kvllama.errors import SessionBusyError, UnknownModelError, UnknownSessionError


class Sessions:
    def __init__(self, models: ModelRegistry) -> None:
        self._models = models
        # Sessions with a request in flight, per (model id, cache salt, session id).
        self._busy: set[tuple[str, str | None, str]] = set()

    def claim(self, model_id: str, session_id: str, request: Request) -> None:
        """Fail fast if the session is busy; free it again when the request ends.

        Sessions are per tenant: the same id under another cache salt is another session.
        """
        slot = (model_id, request.options.cache_salt, session_id)
        with self._models.lock:
            if slot in self._busy:
                raise SessionBusyError(session_id)
            self._busy.add(slot)

        def release() -> None:
            with self._models.lock:
                self._busy.discard(slot)

        request.add_release(release)

    def end(self, session_id: str, model_id: str | None = None, cache_salt: str | None = None) -> bool:
        """Release a sticky session's sequence slot (saving it to the cache first).

        ``cache_salt`` names the tenant the session belongs to. Returns False if
        no model holds that session idle (unknown, or a request of it is still
        running: then ``SessionBusyError``).
        """
        if model_id is not None:
            self._models.entry(model_id)  # UnknownModelError for an id it never knew
        models = [m for m in self._models.all() if model_id is None or m.id == model_id]
        with self._models.lock:
            busy = any((m.id, cache_salt, session_id) in self._busy for m in models)
        if busy:
            raise SessionBusyError(session_id)
        return any(m.loop.end_session(session_id, cache_salt) for m in models)

    def fork(self, model_id: str, session_id: str, new_session_id: str,
             cache_salt: str | None = None) -> None:
        """A new sticky session that starts as a copy of an idle one (its live KV copied once).

        Both go on independently: the next turns of either prefill only their
        own new tokens. Raises SessionBusyError (a request of either is running),
        UnknownSessionError, SessionConflictError or NoFreeSlotError.
        """
        try:
            model = self._models.get(model_id)
        except UnknownModelError:
            self._models.entry(model_id)  # unknown model: that error
            raise UnknownSessionError(session_id) from None  # known, not loaded: no session lives
        with self._models.lock:
            for sid in (session_id, new_session_id):
                if (model.id, cache_salt, sid) in self._busy:
                    raise SessionBusyError(sid)
        model.loop.fork_session(session_id, new_session_id, cache_salt)
