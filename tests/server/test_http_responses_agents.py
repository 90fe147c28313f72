"""The OpenAI Agents SDK (``openai-agents``) runs against kvllama's Responses API unmodified.

The test model does not call tools on its own, so the agent's first step requires one
(``tool_choice="required"``: kvllama forces the call with a grammar in the model's markers);
the SDK runs the tool, sends its output back, and the model answers: an agent hook (the SDK's
public ``AgentHooks``) sets ``tool_choice: "none"`` for that step, which kvllama enforces with a
grammar that never writes the tool-call marker. Tracing is off (it would export to OpenAI).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from agents import (
    Agent,
    AgentHooks,
    ModelSettings,
    OpenAIResponsesModel,
    Runner,
    function_tool,
    set_tracing_disabled,
)
from openai import AsyncOpenAI

import kvllama
from kvllama.server import ServerConfig, ServerThread, create_app

CALLS: list[str] = []


@function_tool
def get_weather(city: str) -> str:
    """The weather in a city."""
    CALLS.append(city)
    return f"Sunny and 24 C in {city}."


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    with kvllama.Engine() as engine:
        engine.load_model("agent", markers="qwen3", n_seq_max=2, n_ctx=4096, n_threads=1)
        with ServerThread(create_app(engine, ServerConfig(max_tokens_limit=256))) as served:
            yield served


class AnswerAfterTheTool(AgentHooks):
    """Once the tool has run, the next step may not call it again (``tool_choice: "none"``): a small
    model that has seen one call in its context would happily write another."""

    async def on_tool_end(self, context: object, agent: Agent, tool: object, result: str) -> None:
        agent.model_settings = agent.model_settings.resolve(ModelSettings(tool_choice="none"))


def test_an_agent_calls_a_tool_and_answers(url):
    set_tracing_disabled(True)

    async def run() -> object:
        client = AsyncOpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
        agent = Agent(name="weather", instructions="You answer questions about the weather.",
                      tools=[get_weather], model=OpenAIResponsesModel(model="agent", openai_client=client),
                      model_settings=ModelSettings(tool_choice="required", max_tokens=64, temperature=0),
                      hooks=AnswerAfterTheTool(), reset_tool_choice=False)
        try:
            return await Runner.run(agent, "What is the weather like in Paris today?", max_turns=3)
        finally:
            await client.close()

    result = asyncio.run(run())
    assert len(CALLS) == 1 and CALLS[0]  # the forced call reached the tool, with a city
    kinds = [item.type for item in result.new_items]  # type: ignore[attr-defined]
    assert kinds[:2] == ["tool_call_item", "tool_call_output_item"] and kinds[-1] == "message_output_item"
    assert isinstance(result.final_output, str)  # type: ignore[attr-defined]
