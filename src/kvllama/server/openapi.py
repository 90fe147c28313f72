"""The request bodies in ``/openapi.json``.

The routes read the raw JSON themselves (``schemas_common.read_json``) so that
depth, size and Unicode checks run before pydantic, which leaves FastAPI
without a body model to publish. This adds each POST route's pydantic model,
the same one the route validates with, as its ``requestBody``: clients and
fuzzers (the hostile suite runs schemathesis over this document) see the real
schemas.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel

from kvllama.server.anthropic.schemas import CountTokensRequest, MessagesRequest
from kvllama.server.openai.schemas import ChatCompletionRequest, CompletionRequest, EmbeddingRequest
from kvllama.server.responses.schemas import ResponsesRequest

REQUEST_MODELS: dict[str, type[BaseModel]] = {
    "/v1/chat/completions": ChatCompletionRequest,
    "/v1/completions": CompletionRequest,
    "/v1/embeddings": EmbeddingRequest,
    "/v1/messages": MessagesRequest,
    "/v1/messages/count_tokens": CountTokensRequest,
    "/v1/responses": ResponsesRequest,
}


def publish_request_bodies(app: FastAPI) -> None:
    """Make ``app.openapi()`` describe every POST route's JSON body."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        document = build()
        components = document.setdefault("components", {}).setdefault("schemas", {})
        for path, model in REQUEST_MODELS.items():
            operation = document.get("paths", {}).get(path, {}).get("post")
            if operation is None:
                continue
            schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
            components.update(schema.pop("$defs", {}))
            components[model.__name__] = schema
            ref = {"$ref": f"#/components/schemas/{model.__name__}"}
            operation["requestBody"] = {"required": True, "content": {"application/json": {"schema": ref}}}
        app.openapi_schema = document
        return document

    app.openapi = openapi  # type: ignore[method-assign]


def body_schema(model: type[BaseModel], *, required: bool = True) -> dict[str, Any]:
    """``openapi_extra`` publishing ``model`` as a route's JSON body, its ``$defs`` inlined.

    For routes outside :data:`REQUEST_MODELS` (they declare it on their decorator).
    """
    schema = model.model_json_schema()
    defs = schema.pop("$defs", {})

    def inline(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                return inline(defs[ref.removeprefix("#/$defs/")])
            return {k: inline(v) for k, v in node.items()}
        if isinstance(node, list):
            return [inline(v) for v in node]
        return node

    content = {"application/json": {"schema": inline(schema)}}
    return {"requestBody": {"required": required, "content": content}}
