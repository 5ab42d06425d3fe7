"""openai (Python SDK): the reference client."""

import json

import httpx
import openai
from _cells import API_KEY, BASE_URL, FOREIGN, SERVED, Trip, check, get_weather, run

client = openai.OpenAI(base_url=BASE_URL, api_key=API_KEY, max_retries=0)
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]


def chat():
    r = client.chat.completions.create(
        model=FOREIGN,
        temperature=0,
        max_tokens=12,
        messages=[{"role": "user", "content": "Say hi."}],
    )
    check(r.model == SERVED, f"model {r.model!r}")
    check(
        r.id.startswith("chatcmpl-") and r.choices[0].finish_reason in ("stop", "length"),
        f"{r.id} {r.choices[0].finish_reason}",
    )
    check(r.choices[0].message.content, "no content")


def stream():
    chunks = list(
        client.chat.completions.create(
            model=FOREIGN,
            temperature=0,
            max_tokens=12,
            stream=True,
            stream_options={"include_usage": True},
            messages=[{"role": "user", "content": "Say hi."}],
        )
    )
    check(len({c.id for c in chunks}) == 1, "one id across chunks")
    check(all(c.model == SERVED for c in chunks), "served id in every chunk")
    reasons = [c.choices[0].finish_reason for c in chunks if c.choices]
    check(reasons[-1] in ("stop", "length"), f"finish {reasons}")
    check(chunks[-1].usage and chunks[-1].usage.completion_tokens > 0, "usage chunk")


def tools():
    tool = openai.pydantic_function_tool(Trip, name="plan_trip")  # $defs inside
    weather = {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string", "maxLength": 20}},
                "required": ["city"],
            },
        },
    }
    r = client.chat.completions.create(
        model=FOREIGN,
        temperature=0,
        max_tokens=150,
        messages=ASK,
        tools=[weather, tool],
        tool_choice="required",
    )
    msg = r.choices[0].message
    check(r.choices[0].finish_reason == "tool_calls" and msg.tool_calls, f"{r.choices[0]}")
    call = msg.tool_calls[0]
    args = json.loads(call.function.arguments)
    result = get_weather(**args) if call.function.name == "get_weather" else "done"
    r2 = client.chat.completions.create(
        model=FOREIGN,
        temperature=0,
        max_tokens=20,
        tools=[weather, tool],
        messages=[
            *ASK,
            msg.model_dump(exclude_none=True),
            {"role": "tool", "tool_call_id": call.id, "content": result},
        ],
    )
    check(r2.choices[0].finish_reason in ("stop", "length", "tool_calls"), "second turn")


def structured():
    r = client.chat.completions.parse(
        model=FOREIGN,
        temperature=0,
        max_tokens=80,
        response_format=Trip,
        messages=[{"role": "user", "content": "A trip to Rome."}],
    )
    check(isinstance(r.choices[0].message.parsed, Trip), "parsed Trip")


async def async_():
    async with openai.AsyncOpenAI(base_url=BASE_URL, api_key=API_KEY, max_retries=0) as c:
        r = await c.chat.completions.create(
            model=FOREIGN, temperature=0, max_tokens=8, messages=[{"role": "user", "content": "Hi"}]
        )
        check(r.model == SERVED and r.choices[0].message.content, "async reply")


def embeddings_not_retried():
    """/v1/embeddings on a chat model: 501 with x-should-retry: false, which the SDK obeys
    (it retried a 501 twice more with its default max_retries=2)."""
    sent = []
    http = httpx.Client(event_hooks={"request": [sent.append]})
    c = openai.OpenAI(base_url=BASE_URL, api_key=API_KEY, http_client=http)  # default retries
    try:
        c.embeddings.create(model=FOREIGN, input="hello")
    except openai.APIStatusError as exc:
        check(
            exc.status_code == 501 and exc.response.headers["x-should-retry"] == "false",
            f"{exc.status_code} {exc.response.headers}",
        )
    else:
        raise AssertionError("embeddings on a chat model answered 200")
    check(len(sent) == 1, f"{len(sent)} requests sent")


run(
    {
        "chat": chat,
        "stream": stream,
        "tools": tools,
        "structured": structured,
        "async": async_,
        "embeddings_not_retried": embeddings_not_retried,
    }
)
