"""instructor: ``instructor.from_openai`` over an OpenAI client with base_url, default mode
(TOOLS: the response model becomes a forced tool call, $defs and all)."""

import instructor
import openai
from _cells import API_KEY, BASE_URL, FOREIGN, Country, Trip, check, run

client = instructor.from_openai(openai.OpenAI(base_url=BASE_URL, api_key=API_KEY, max_retries=0))
ASK = [{"role": "user", "content": "A trip to Rome."}]


def chat():  # response_model=None: the plain completion
    r = client.chat.completions.create(
        model=FOREIGN,
        temperature=0,
        response_model=None,
        max_tokens=12,
        messages=[{"role": "user", "content": "Say hi."}],
    )
    check(r.choices[0].message.content, "content")


def structured():
    trip = client.chat.completions.create(
        model=FOREIGN,
        temperature=0,
        response_model=Trip,
        messages=ASK,
        max_tokens=80,
        max_retries=1,
    )
    check(isinstance(trip, Trip), f"{trip!r}")


def stream():  # partial objects as the call streams
    parts = list(
        client.chat.completions.create_partial(
            model=FOREIGN,
            temperature=0,
            response_model=Trip,
            messages=ASK,
            max_tokens=80,
            max_retries=1,
        )
    )
    check(parts and isinstance(parts[-1].country, Country), f"{parts[-1:]!r}")


def iterable():
    countries = list(
        client.chat.completions.create_iterable(
            model=FOREIGN,
            temperature=0,
            response_model=Country,
            max_tokens=160,
            max_retries=1,
            messages=[{"role": "user", "content": "Name two countries in Europe."}],
        )
    )
    check(countries and all(isinstance(c, Country) for c in countries), f"{countries!r}")


async def async_():
    aclient = instructor.from_openai(
        openai.AsyncOpenAI(base_url=BASE_URL, api_key=API_KEY, max_retries=0)
    )
    trip = await aclient.chat.completions.create(
        model=FOREIGN,
        temperature=0,
        response_model=Trip,
        messages=ASK,
        max_tokens=80,
        max_retries=1,
    )
    check(isinstance(trip, Trip), f"{trip!r}")


run(
    {
        "chat": chat,
        "structured": structured,
        "stream": stream,
        "iterable": iterable,
        "async": async_,
    }
)
