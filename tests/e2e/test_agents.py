"""The OpenAI Agents SDK against the gateway: an agent with a function tool runs its tool loop
(the model calls the tool, the SDK runs it and sends its output back, the model answers) to a
final output, through both of the SDK's models: Responses (its default) and Chat Completions.

The tiny model is random, so the agent steers it as a user steers a weak model: the first turn
must call the tool (``tool_choice`` required), and once the tool has run an agent hook turns tools
off, so the next turn answers in the agent's ``output_type`` (a JSON object the engine closes:
a random model's free text would run to ``max_output_tokens``, an ``incomplete`` response, which
the SDK's Responses model refuses as OpenAI's would be refused).
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable
from typing import Any, Literal

import pytest
from agents import (
    Agent,
    AgentHooks,
    ModelSettings,
    OpenAIChatCompletionsModel,
    OpenAIResponsesModel,
    Runner,
    function_tool,
    set_tracing_disabled,
)
from agents.items import ToolCallItem, ToolCallOutputItem
from agents.models.interface import Model
from openai import AsyncOpenAI
from pydantic import BaseModel

from offline.background import BackgroundStack
from tests.e2e.conftest import TINY

set_tracing_disabled(True)  # the SDK would send traces to OpenAI's servers
CALLS: list[str] = []


@function_tool
def get_weather(city: Literal["paris", "rome"]) -> str:
    """The weather in a city."""
    CALLS.append(city)
    return "sunny"


class Answer(BaseModel):
    weather: Literal["sunny", "rainy"]


class ToolsOffAfterAToolRan(AgentHooks[Any]):
    async def on_tool_end(self, context: Any, agent: Agent[Any], tool: Any, result: str) -> None:
        agent.model_settings = dataclasses.replace(agent.model_settings, tool_choice="none")


MODELS: dict[str, Callable[[AsyncOpenAI], Model]] = {
    "responses": lambda c: OpenAIResponsesModel(model=TINY, openai_client=c),
    "chat_completions": lambda c: OpenAIChatCompletionsModel(model=TINY, openai_client=c),
}


@pytest.mark.parametrize("kind", sorted(MODELS))
def test_an_agent_runs_its_tool_loop_to_a_final_output(stack: BackgroundStack, kind: str) -> None:
    async def run() -> Any:
        async with AsyncOpenAI(
            base_url=f"{stack.config.api_url}/v1", api_key=stack.api_key, max_retries=0
        ) as client:
            agent = Agent(
                name="weather",
                instructions="answer with the weather",
                tools=[get_weather],
                model=MODELS[kind](client),
                model_settings=ModelSettings(tool_choice="required", temperature=0, max_tokens=48),
                output_type=Answer,
                reset_tool_choice=False,  # the hook decides
                hooks=ToolsOffAfterAToolRan(),
            )
            return await Runner.run(agent, "weather in paris?", max_turns=6)

    CALLS.clear()
    result = asyncio.run(run())
    kinds = [type(item) for item in result.new_items]
    assert ToolCallItem in kinds and ToolCallOutputItem in kinds
    assert CALLS, "the SDK ran the tool the model called"
    assert isinstance(result.final_output, Answer)
    assert len(result.raw_responses) >= 2  # the tool call, then the answer after its output
