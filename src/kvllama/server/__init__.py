"""OpenAI- and Anthropic-compatible HTTP server over a :class:`kvllama.Engine`.

::

    import kvllama
    from kvllama.server import ServerConfig, serve

    engine = kvllama.Engine()
    engine.load_model("gemma")
    serve(engine, ServerConfig(api_key=None), host="127.0.0.1", port=8000)

Module map: ``app`` (factory, handlers, health), ``openapi`` (request bodies in
the published document), ``middleware`` (auth, body limit, request metrics),
``openai_routes`` / ``anthropic_routes`` (handlers), ``schemas_*`` (request
bodies), ``openai_format`` / ``anthropic_format`` (renderers of the reply
reducer's deltas, :mod:`kvllama.replies`: SSE frames or one JSON body),
``agent_params`` (sessions, thinking, signature checks), ``generation``
(driving one engine request, disconnect -> cancel), ``chat_prompt``,
``grammar`` (JSON schema -> GBNF), ``metrics``, ``errors``, ``sse``, ``runner``
(uvicorn).
"""

from kvllama.server.app import create_app
from kvllama.server.config import ServerConfig
from kvllama.server.runner import ServerThread, serve

__all__ = ["ServerConfig", "ServerThread", "create_app", "serve"]
