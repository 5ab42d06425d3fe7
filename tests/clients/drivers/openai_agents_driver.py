"""openai-agents: OpenAIChatCompletionsModel over an AsyncOpenAI client with base_url (its
docs' way for other providers; the default Responses API is not what local servers offer)."""

from _cells import API_KEY, BASE_URL, FOREIGN, Country, Trip, check, get_weather, run
from agents import (
    Agent,
    ModelSettings,
    OpenAIChatCompletionsModel,
    Runner,
    function_tool,
    set_tracing_disabled,
)
from openai import AsyncOpenAI

set_tracing_disabled(True)
SHORT = ModelSettings(max_tokens=12, temperature=0)


def model() -> OpenAIChatCompletionsModel:
    """A model on a new client: each cell runs in its own event loop (run_sync makes one)."""
    client = AsyncOpenAI(base_url=BASE_URL, api_key=API_KEY, max_retries=0)
    return OpenAIChatCompletionsModel(model=FOREIGN, openai_client=client)


def chat():
    r = Runner.run_sync(Agent(name="a", model=model(), model_settings=SHORT), "Say hi.")
    check(isinstance(r.final_output, str) and r.final_output, f"{r.final_output!r}")


async def stream_():
    r = Runner.run_streamed(Agent(name="a", model=model(), model_settings=SHORT), "Say hi.")
    kinds = [e.type async for e in r.stream_events()]
    check("raw_response_event" in kinds and r.final_output, f"{kinds[:5]} {r.final_output!r}")


@function_tool
def visit(country: Country) -> str:
    """Record a visit to a country."""
    return f"visited {country.name}"


def tools():  # a model-typed argument ($defs), forced once, then the result goes back
    agent = Agent(
        name="a",
        model=model(),
        tools=[function_tool(get_weather), visit],
        model_settings=ModelSettings(max_tokens=60, temperature=0, tool_choice="required"),
    )
    r = Runner.run_sync(agent, "Visit France.", max_turns=4)
    kinds = [i.type for i in r.new_items]
    check("tool_call_item" in kinds and "tool_call_output_item" in kinds, f"{kinds}")


def structured():
    agent = Agent(
        name="a",
        model=model(),
        output_type=Trip,
        model_settings=ModelSettings(max_tokens=80, temperature=0),
    )
    r = Runner.run_sync(agent, "A trip to Rome.")
    check(isinstance(r.final_output, Trip), f"{r.final_output!r}")


async def async_():
    r = await Runner.run(Agent(name="a", model=model(), model_settings=SHORT), "Hi")
    check(r.final_output, "async reply")


run({"chat": chat, "stream": stream_, "tools": tools, "structured": structured, "async": async_})
