"""One Responses request as a generation: a fresh conversation, or the continuation of a stored one.

``previous_response_id`` continues a stored response *exactly*: the new
prompt is the stored transcript (the token ids the model saw, then the ids it
sampled) followed by the template's text for the new input (the end of the
assistant turn, the new messages, the generation prompt), tokenized on its
own. The ids the model wrote are never re-tokenized from their text, so the
prompt equals what a cold run of "previous prompt + sampled reply + new
message" sees, and the stored row of the previous prompt (``parent_key``), a
kept slot or a settled reply serves it warm. When that cannot hold (the
instructions changed, the conversation has media, or the template does not
render the new turn as a pure suffix), the whole stored conversation is
rendered again as a chat: the same messages, a fresh prompt.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kvllama.api.engine import Engine
from kvllama.request import ChatInput, GenerationRequest
from kvllama.results import CompletionResult
from kvllama.server.edge import Edge
from kvllama.server.errors import ApiError
from kvllama.server.grammar import JSON_OBJECT_GRAMMAR, json_schema_grammar
from kvllama.server.responses.schemas import ResponsesRequest, items_to_messages
from kvllama.server.responses.store import StoredResponse
from kvllama.server.tool_choice import forced_call_grammar, no_call_grammar

# Stands in for the previous reply while the template renders the turn around it.
_SENTINEL = "\u2063kvllama:previous-reply\u2063"


@dataclass
class Turn:
    generation: GenerationRequest
    # The conversation before the reply (earlier turns' messages, then this input's).
    messages: list[dict[str, Any]]


def build_turn(body: ResponsesRequest, edge: Edge, engine: Engine, model_id: str,
               previous: StoredResponse | None) -> Turn:
    new = items_to_messages(body.input_items())
    history = previous.messages if previous is not None else []
    messages = [*history, *new]
    if not any(m["role"] in ("user", "tool") for m in new) and not history:
        raise ApiError(400, "input has no message for the model to answer", param="input")
    tools = body.function_tools()
    options = _options(body, edge, engine, model_id, tools)
    if previous is not None and _continuable(body, previous, new):
        continued = _continuation(engine, model_id, previous, new, body.instructions, tools)
        if continued is not None:
            tokens, stops = continued
            parent = bytes.fromhex(previous.finish_key) if previous.finish_key else None
            options["stop"] = list(stops)  # the template's (a chat render would add them too)
            generation = GenerationRequest.build(tokens, parent_key=parent, **options)
            return Turn(generation, messages)
    chat = ChatInput.of(messages, system=body.instructions, tools=tools)
    generation = GenerationRequest.build(chat=chat, media_limits=edge.config.media_limits, **options)
    return Turn(generation, messages)


def _options(body: ResponsesRequest, edge: Edge, engine: Engine, model_id: str,
             tools: list[dict[str, Any]] | None) -> dict[str, Any]:
    given = body.max_output_tokens
    max_tokens = given if given is not None else edge.config.max_tokens_limit
    return dict(
        max_tokens=edge.max_tokens(max_tokens), temperature=body.temperature, top_p=body.top_p,
        seed=body.seed, top_k=body.top_k, min_p=body.min_p, repetition_penalty=body.repetition_penalty,
        grammar=_grammar(body, engine, model_id, tools), cache_salt=body.cache_salt,
        adapters=edge.adapters(body.lora), keep_alive=body.keep_alive, thinking=body.thinking,
        priority=edge.priority(body.priority),
    )


def _grammar(body: ResponsesRequest, engine: Engine, model_id: str,
             tools: list[dict[str, Any]] | None) -> str | None:
    """At most one of: the client's GBNF, ``text.format`` (JSON), a forced tool call."""
    fmt = body.text.format if body.text is not None else None
    forced = body.forced_tool()
    chosen = [name for name, on in (("grammar", body.grammar is not None),
                                    ("text.format", fmt is not None and fmt.type != "text"),
                                    ("tool_choice", forced is not None)) if on]
    if len(chosen) > 1:
        raise ApiError(400, f"{' and '.join(chosen)} both constrain the output; give one", param=chosen[1])
    if forced is not None:
        return forced_call_grammar(engine.tool_call_markers(model_id), tools or [], forced)
    if fmt is not None and fmt.type == "json_object":
        return JSON_OBJECT_GRAMMAR
    if fmt is not None and fmt.type == "json_schema":
        if fmt.schema_ is None:
            raise ApiError(400, "text.format of type json_schema needs a schema", param="text.format.schema")
        return json_schema_grammar(fmt.schema_)
    if body.grammar is None and body.tool_choice == "none" and tools:
        markers = engine.tool_call_markers(model_id)
        return no_call_grammar(markers) if markers is not None else None  # no markers: no calls anyway
    return body.grammar


def _continuable(body: ResponsesRequest, previous: StoredResponse, new: list[dict[str, Any]]) -> bool:
    has_media = any(isinstance(m.get("content"), list) and any(p.get("type") == "input_image"
                                                               for p in m["content"]) for m in new)
    return bool(previous.transcript) and not previous.has_media and not has_media \
        and body.instructions == previous.instructions


Continued = tuple[list[int], tuple[str, ...]]


def _continuation(engine: Engine, model_id: str, previous: StoredResponse, new: list[dict[str, Any]],
                  system: str | None, tools: list[dict[str, Any]] | None) -> Continued | None:
    """(the previous transcript's ids + the new turn's, the template's stops), or None."""
    before_reply = [*previous.messages[:-1], {"role": "assistant", "content": _SENTINEL}]
    closed = engine.apply_chat_template(model_id, before_reply, system, tools, add_generation_prompt=False)
    prompt = engine.chat_prompt(model_id, ChatInput.of([*before_reply, *new], system=system, tools=tools))
    if _SENTINEL not in closed or not prompt.text.startswith(closed):
        return None
    suffix = closed[closed.index(_SENTINEL) + len(_SENTINEL):] + prompt.text[len(closed):]
    ids = engine.tokenize(model_id, suffix, add_special=False, parse_special=True)
    return [*previous.transcript, *ids], prompt.template_stops


def transcript_of(engine: Engine, model_id: str, result: CompletionResult) -> list[int]:
    """The ids a later turn continues: the prompt's, then the reply's up to where a stop string cut it.

    A stop string's ids were sampled but are not the reply (the template's "\\nUser:" on a base
    model): they are dropped when they start on a token boundary; when the stop began inside
    a token, [] (no exact continuation: the next turn renders the conversation again).
    """
    generated = list(result.generated_tokens)
    prompt = list(result.context_tokens[: len(result.context_tokens) - len(generated)])
    stop = result.stop_sequence
    if not stop:
        return [*prompt, *generated]
    cut = engine.detokenize(model_id, generated).find(stop)
    keep = len(generated)
    while keep > 0 and len(engine.detokenize(model_id, generated[:keep])) > cut:
        keep -= 1
    if cut < 0 or len(engine.detokenize(model_id, generated[:keep])) != cut:
        return []
    return [*prompt, *generated[:keep]]
