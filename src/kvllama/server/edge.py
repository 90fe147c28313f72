"""What a request body needs from outside itself to become a :class:`~kvllama.request.GenerationRequest`.

Each API family's schema has one ``to_request(edge)`` method; the server
settings and the HTTP context it depends on come in an :class:`Edge`: the
server's token limits, the ``x-session-id`` header, and the model's adapter
list (llama-server's ``lora`` ids are indices into it). So a body becomes the
request object in one call that a test can make without a server.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from starlette.requests import Request

from kvllama.errors import InvalidRequestError
from kvllama.request import check_session_id
from kvllama.server.agent_params import thinking_key
from kvllama.server.config import ServerConfig
from kvllama.server.errors import ApiError
from kvllama.server.schemas_common import SESSION_HEADER, LoraRef
from kvllama.server.state import ServerState


def _no_adapters() -> list[str]:
    return []


@dataclass(frozen=True)
class Edge:
    config: ServerConfig = field(default_factory=ServerConfig)
    # The x-session-id header, if the client sent one.
    session_header: str | None = None
    # The served model's adapter ids in list order (asked only when a body names adapters).
    adapter_ids: Callable[[], list[str]] = _no_adapters
    # The key thinking blocks sent back must be signed with (None: nothing to check).
    thinking_key: bytes | None = None
    # The priority header's value, when the server names one and the request carries it.
    priority_header: str | None = None

    @classmethod
    def of(cls, request: Request, state: ServerState, model_id: str) -> Edge:
        def adapter_ids() -> list[str]:
            return [str(a["id"]) for a in state.engine.list_adapters(model_id)]

        header = state.config.priority_header
        return cls(state.config, request.headers.get(SESSION_HEADER), adapter_ids, thinking_key(state),
                   request.headers.get(header) if header else None)

    def max_tokens(self, value: int) -> int:
        """The client's token limit, within this server's."""
        limit = self.config.max_tokens_limit
        if value < 1:
            raise ApiError(400, f"max_tokens must be at least 1, got {value}", param="max_tokens")
        if value > limit:
            raise ApiError(400, f"max_tokens is {value} but this server allows at most {limit}",
                           param="max_tokens")
        return value

    def session(self, body_session: str | None) -> str | None:
        """The session id from the body or the ``x-session-id`` header (they must agree)."""
        header = self.session_header
        if header is not None:
            try:
                check_session_id(header)
            except InvalidRequestError as exc:
                raise ApiError(400, f"{SESSION_HEADER}: {exc}", param="session_id") from None
        if body_session is not None and header is not None and header != body_session:
            raise ApiError(400, f"session_id in the body and the {SESSION_HEADER} header differ",
                           param="session_id")
        return body_session if body_session is not None else header

    def priority(self, body_priority: int | None) -> int | None:
        """The request's priority: the trusted proxy's header when set, else the body's field."""
        if self.priority_header is None:
            return body_priority
        try:
            return int(self.priority_header.strip())
        except ValueError:
            raise ApiError(400, f"the {self.config.priority_header} header must be an integer priority",
                           param="priority") from None

    def adapters(self, refs: Sequence[LoraRef] | None) -> list[tuple[str, float]] | None:
        """A body's ``lora`` list as the request's adapter set (None: the model's defaults)."""
        if refs is None:
            return None
        ids = self.adapter_ids()
        return [(adapter_id_of(ids, ref.id), ref.scale) for ref in refs]


def adapter_id_of(ids: list[str], ref: int | str) -> str:
    """llama-server's adapter reference (an index into the model's list) or kvllama's own id."""
    if isinstance(ref, int):
        if not 0 <= ref < len(ids):
            raise ApiError(400, f"lora id {ref} is not one of this model's adapters (0..{len(ids) - 1})",
                           param="lora")
        return ids[ref]
    if ref not in ids:
        raise ApiError(400, f"no LoRA adapter {ref!r} is loaded for this model", param="lora")
    return ref
