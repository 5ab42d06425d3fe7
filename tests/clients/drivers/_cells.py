"""What every driver shares: the nested output model, a tool, and the cell runner.

A driver runs in .venv-clients (the libraries' own pins), drives one library the way its docs
show for a custom base URL, and prints one JSON object: {cell: "ok" | "FAIL: why"}. The pytest
side (tests/clients/test_*.py) asserts each cell. Every request names a model the server does
not serve (``FOREIGN``): a one-model server answers any name with its own id.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import os
import sys
import traceback
from collections.abc import Callable
from typing import Any

from nested import Country as Country  # re-exported: the drivers import them from here
from nested import Trip as Trip

BASE_URL = sys.argv[1]  # ".../v1"
SERVED = sys.argv[2]  # the id the server answers with
FOREIGN = "gpt-4o-mini"  # hard-coded, as in countless configs
API_KEY = "sk-local"  # the libraries insist on one; the server has none set
os.environ.setdefault("OPENAI_API_KEY", API_KEY)


def get_weather(city: str) -> str:
    """Get the current weather in a city."""
    return json.dumps({"city": city, "temperature": 18, "sky": "sunny"})


def check(ok: Any, why: str) -> None:
    if not ok:
        raise AssertionError(why)


def run(cells: dict[str, Callable[[], Any]]) -> None:
    results: dict[str, str] = {}
    for name, fn in cells.items():
        try:
            out = fn()
            if inspect.isawaitable(out):
                asyncio.run(out)
            results[name] = "ok"
        except BaseException as exc:
            tb = traceback.format_exc(limit=4)
            results[name] = f"FAIL: {type(exc).__name__}: {exc}"[:1500] + "\n" + tb[-1500:]
    print("RESULTS " + json.dumps(results))
