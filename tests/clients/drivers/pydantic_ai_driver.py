"""pydantic-ai: OpenAIChatModel with an OpenAIProvider(base_url=...) (its docs' way for
OpenAI-compatible servers); structured output through its default (an output tool)."""

from _cells import API_KEY, BASE_URL, FOREIGN, Trip, check, get_weather, run
from pydantic_ai import Agent
from pydantic_ai.models.openai import OpenAIChatModel
from pydantic_ai.providers.openai import OpenAIProvider

model = OpenAIChatModel(FOREIGN, provider=OpenAIProvider(base_url=BASE_URL, api_key=API_KEY))
SHORT = {"max_tokens": 12, "temperature": 0}
LONG = {"max_tokens": 80, "temperature": 0}


def chat():
    r = Agent(model).run_sync("Say hi.", model_settings=SHORT)
    check(isinstance(r.output, str) and r.output, f"{r.output!r}")


async def stream_():
    async with Agent(model).run_stream("Say hi.", model_settings=SHORT) as r:
        pieces = [p async for p in r.stream_text(delta=True)]
    check(pieces and "".join(pieces), "streamed text")


def structured():
    r = Agent(model, output_type=Trip).run_sync("A trip to Rome.", model_settings=LONG)
    check(isinstance(r.output, Trip), f"{r.output!r}")


def tools():  # a function tool beside the output tool: calls, results, then the output
    agent = Agent(model, output_type=Trip, tools=[get_weather])
    r = agent.run_sync("Weather in Rome, then plan a trip there.", model_settings=LONG)
    check(isinstance(r.output, Trip), f"{r.output!r}")
    kinds = [p.part_kind for m in r.all_messages() for p in m.parts]
    check("tool-call" in kinds and "tool-return" in kinds, f"{kinds}")


async def async_():
    r = await Agent(model).run("Hi", model_settings=SHORT)
    check(r.output, "async reply")


run({"chat": chat, "stream": stream_, "tools": tools, "structured": structured, "async": async_})
