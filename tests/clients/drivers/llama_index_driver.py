"""llama-index: OpenAILike with api_base (its docs' way for OpenAI-compatible servers)."""

from _cells import API_KEY, BASE_URL, FOREIGN, Trip, check, get_weather, run
from llama_index.core.llms import ChatMessage
from llama_index.core.prompts import PromptTemplate
from llama_index.core.tools import FunctionTool
from llama_index.llms.openai_like import OpenAILike

llm = OpenAILike(
    model=FOREIGN,
    api_base=BASE_URL,
    api_key=API_KEY,
    is_chat_model=True,
    is_function_calling_model=True,
    max_tokens=60,
    temperature=0,
    max_retries=0,
    context_window=2048,
)
HI = [ChatMessage(role="user", content="Say hi.")]


def chat():
    r = llm.chat(HI, max_tokens=12)
    check(r.message.content, f"{r}")


def stream():
    pieces = [c.delta for c in llm.stream_chat(HI, max_tokens=12)]
    check(len(pieces) > 1 and "".join(p or "" for p in pieces), "streamed text")


def tools():
    weather = FunctionTool.from_defaults(fn=get_weather)
    r = llm.chat_with_tools([weather], user_msg="What is the weather in Paris?", tool_required=True)
    calls = llm.get_tool_calls_from_response(r, error_on_no_tool_call=True)
    result = weather(**calls[0].tool_kwargs)
    history = [
        ChatMessage(role="user", content="What is the weather in Paris?"),
        r.message,
        ChatMessage(
            role="tool", content=str(result), additional_kwargs={"tool_call_id": calls[0].tool_id}
        ),
    ]
    final = llm.chat(history, max_tokens=20)
    check(final.message is not None, "second turn")


def structured():
    out = llm.structured_predict(Trip, PromptTemplate("A trip to {city}."), city="Rome")
    check(isinstance(out, Trip), f"{out!r}")


async def async_():
    r = await llm.achat([ChatMessage(role="user", content="Hi")], max_tokens=8)
    check(r.message.content, "async reply")


run({"chat": chat, "stream": stream, "tools": tools, "structured": structured, "async": async_})
