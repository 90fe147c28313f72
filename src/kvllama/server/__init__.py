"""OpenAI- and Anthropic-compatible HTTP server over a :class:`kvllama.Engine`.

::

    import kvllama
    from kvllama.server import ServerConfig, serve

    engine = kvllama.Engine()
    engine.load_model("gemma")
    serve(engine, ServerConfig(api_key=None), host="127.0.0.1", port=8000)

Module map: ``app`` (factory, handlers), ``middleware`` (auth, body limit,
request metrics), ``openai_routes`` / ``anthropic_routes`` (handlers),
``schemas_*`` (request bodies), ``openai_format`` / ``anthropic_format``
(bodies and SSE state machines; ``anthropic_blocks`` the content-block machine
both Anthropic replies share), ``tool_calls`` (parsing a model's tool call),
``agent_params`` (sessions, thinking, signature checks), ``generation`` (driving one engine request,
disconnect -> cancel), ``chat_prompt``, ``grammar`` (JSON schema -> GBNF),
``metrics``, ``errors``, ``sse``, ``runner`` (uvicorn), ``bench_serve``.
"""

from kvllama.server.app import create_app
from kvllama.server.config import ServerConfig
from kvllama.server.runner import ServerThread, serve

__all__ = ["ServerConfig", "ServerThread", "create_app", "serve"]
