"""litellm: the ``openai/`` prefix with api_base (its docs' way for OpenAI-compatible servers)."""

import json

import litellm
from _cells import API_KEY, BASE_URL, FOREIGN, Trip, check, get_weather, run

KW = {
    "model": f"openai/{FOREIGN}",
    "api_base": BASE_URL,
    "api_key": API_KEY,
    "temperature": 0,
    "num_retries": 0,
}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]
WEATHER = {
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


def chat():
    r = litellm.completion(messages=[{"role": "user", "content": "Say hi."}], max_tokens=12, **KW)
    check(r.choices[0].message.content and r.choices[0].finish_reason in ("stop", "length"), f"{r}")


def stream():
    chunks = list(
        litellm.completion(
            messages=[{"role": "user", "content": "Say hi."}], max_tokens=12, stream=True, **KW
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    check(len(chunks) > 1 and text, "streamed text")


def tools():
    r = litellm.completion(
        messages=ASK, tools=[WEATHER], tool_choice="required", max_tokens=40, **KW
    )
    msg = r.choices[0].message
    check(r.choices[0].finish_reason == "tool_calls" and msg.tool_calls, f"{r}")
    call = msg.tool_calls[0]
    result = get_weather(**json.loads(call.function.arguments))
    r2 = litellm.completion(
        messages=[
            *ASK,
            msg.model_dump(exclude_none=True),
            {"role": "tool", "tool_call_id": call.id, "content": result},
        ],
        tools=[WEATHER],
        max_tokens=20,
        **KW,
    )
    check(r2.choices[0].finish_reason in ("stop", "length", "tool_calls"), f"{r2}")


def structured():
    r = litellm.completion(
        messages=[{"role": "user", "content": "A trip to Rome."}],
        response_format=Trip,
        max_tokens=80,
        **KW,
    )
    Trip.model_validate_json(r.choices[0].message.content)


async def async_():
    r = await litellm.acompletion(messages=[{"role": "user", "content": "Hi"}], max_tokens=8, **KW)
    check(r.choices[0].message.content, "async reply")


run({"chat": chat, "stream": stream, "tools": tools, "structured": structured, "async": async_})
