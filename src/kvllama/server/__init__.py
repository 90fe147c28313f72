"""OpenAI- and Anthropic-compatible HTTP server over a :class:`kvllama.Engine`.

::

    import kvllama
    from kvllama.server import ServerConfig, serve

    engine = kvllama.Engine()
    engine.load_model("gemma")
    serve(engine, ServerConfig(api_key=None), host="127.0.0.1", port=8000)

Layout: a folder per API family, each split the same way (``schemas``,
``routes``, ``rendering``): ``openai/``, ``anthropic/``, ``ollama/``, and
``admin/`` for the server's own endpoints (tokenize, cache lookup, sessions,
LoRA adapters, status and its page). Shared plumbing stays here: ``app``
(factory, health), ``config``, ``state``, ``middleware`` (auth, body limit,
request metrics), ``metrics`` (Prometheus), ``errors``, ``openapi`` (request
bodies in the published document), ``schemas_common`` (fields every family
shares), ``edge`` (what a body needs besides itself to become the one
:class:`~kvllama.request.GenerationRequest`: limits, the session header,
adapter ids), ``generation`` (driving one engine request, disconnect ->
cancel), ``agent_params`` (thinking signature checks), ``grammar`` (JSON
schema -> GBNF), ``sse``, ``runner`` (uvicorn).
"""

from kvllama.server.app import create_app
from kvllama.server.config import ServerConfig
from kvllama.server.runner import ServerThread, serve

__all__ = ["ServerConfig", "ServerThread", "create_app", "serve"]
