"""Tools and argument models the Python tool-calling suites share (MLX e2e, llama)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "description": "City name, e.g. Paris"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city", "unit"],
            "additionalProperties": False,
        },
    },
}
TIME_TOOL = {
    "type": "function",
    "function": {
        "name": "get_time",
        "description": "Get the current local time in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}
ASK = [{"role": "user", "content": "What is the weather like in Paris today?"}]


class WeatherArgs(BaseModel):
    """What a call to WEATHER_TOOL must carry."""

    city: str
    unit: Literal["celsius", "fahrenheit"]
