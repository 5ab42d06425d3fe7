"""langchain-openai: ChatOpenAI with base_url (its docs' way for OpenAI-compatible servers)."""

from _cells import API_KEY, BASE_URL, FOREIGN, SERVED, Trip, check, get_weather, run
from langchain_core.messages import HumanMessage, ToolMessage
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI

llm = ChatOpenAI(
    model=FOREIGN, base_url=BASE_URL, api_key=API_KEY, max_tokens=60, temperature=0, max_retries=0
)


def chat():
    m = llm.invoke("Say hi.", max_tokens=12)
    check(m.response_metadata.get("model_name") == SERVED, f"{m.response_metadata}")
    check(m.content and m.response_metadata.get("finish_reason") in ("stop", "length"), "content")


def stream():
    chunks = list(llm.stream("Say hi.", max_tokens=12))
    check(len(chunks) > 1 and "".join(c.content for c in chunks), "streamed text")


def tools():
    weather = tool(get_weather)
    bound = llm.bind_tools([weather], tool_choice="required")
    ask = HumanMessage("What is the weather in Paris?")
    ai = bound.invoke([ask])
    check(ai.tool_calls and ai.tool_calls[0]["name"] == "get_weather", f"{ai}")
    call = ai.tool_calls[0]
    result = ToolMessage(weather.invoke(call["args"]), tool_call_id=call["id"])
    final = llm.bind_tools([weather]).invoke([ask, ai, result], max_tokens=20)
    check(
        final.response_metadata.get("finish_reason") in ("stop", "length", "tool_calls"),
        f"{final.response_metadata}",
    )


def structured():
    out = llm.with_structured_output(Trip).invoke("A trip to Rome.")  # the default method
    check(isinstance(out, Trip), f"{out!r}")


async def async_():
    m = await llm.ainvoke("Hi", max_tokens=8)
    check(m.content, "async reply")


run({"chat": chat, "stream": stream, "tools": tools, "structured": structured, "async": async_})
