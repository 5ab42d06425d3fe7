"""Hostile input against the real MLX engine (the embedded SmolLM2, in this process): one bad
request is a 400 naming its field and never hurts the next one (issue 13 items 1, 3, 8, 12).

After each case a sampled (temperature 0.8, no seed) and a greedy request must both answer.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import psutil
import pytest

from tests.e2e.conftest import E2EServer
from tests.waiting import wait_until

PROBE = {
    "messages": [{"role": "user", "content": "What is the capital of France?"}],
    "max_tokens": 4,
}
HEALTH_BOUND_S = 1.0


def post(server: E2EServer, body: dict | bytes, path: str = "/chat/completions") -> httpx.Response:
    """``body`` as JSON; bytes as they are (a large body encoded once, outside the timing: this
    process's threads share the GIL with the server, a remote client's would not)."""
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx.post(
        server.base_url + path,
        content=content,
        headers={"content-type": "application/json"},
        timeout=180,
    )


def assert_probes_answer(server: E2EServer) -> None:
    """The unseeded sampled request is the one mlx's poisoned global key used to break."""
    for extra in ({"temperature": 0.8}, {"temperature": 0.0}):
        r = post(server, {**PROBE, **extra})
        assert r.status_code == 200, r.text
        assert r.json()["choices"][0]["message"]["content"]


@pytest.mark.parametrize("top_k", [49153, 50000, 10**18, 2**64])
def test_top_k_past_the_vocabulary_is_a_400_and_sampling_still_works(e2e_server, top_k):
    r = post(e2e_server, {**PROBE, "temperature": 0.8, "top_k": top_k})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == "top_k"
    assert_probes_answer(e2e_server)


EXTREME_BUT_VALID = [
    {"top_k": 49152},  # the whole vocabulary: no filter
    {"temperature": 1e-300},
    {"temperature": 5e-324},  # greedy
    {"top_p": 1e-300},
    {"min_p": 1.0},
    {"top_k": 1},
    {"repetition_penalty": 1e-300},
    {"repetition_penalty": 10},
    {"presence_penalty": 2, "frequency_penalty": -2},
    {"logit_bias": {"0": 100, "49151": -100, "2": 100}},
    {"seed": -(2**63)},
    {"seed": 2**64 - 1, "n": 3},
]


@pytest.mark.parametrize("fields", EXTREME_BUT_VALID, ids=lambda f: json.dumps(f))
def test_extreme_sampling_values_are_served_and_hurt_nothing(e2e_server, fields):
    r = post(e2e_server, {**PROBE, "temperature": 0.8, **fields})
    assert r.status_code == 200, r.text
    assert_probes_answer(e2e_server)


U = {"role": "user", "content": "hi"}
CLIENT_ERRORS = [
    (
        "/chat/completions",
        {"messages": [U, {"role": "assistant", "tool_calls": [{"function": 5}]}, U]},
        "messages[1].tool_calls[0].function",
    ),
    (
        "/chat/completions",
        {
            "messages": [U],
            "tools": [{"type": "function", "function": {"name": "f"}}],
            "tool_choice": {"type": "function", "function": "f"},
        },
        "tool_choice.function",
    ),
    ("/completions", {"prompt": ""}, "prompt"),
    ("/completions", {"prompt": "\ud800"}, "prompt"),
    ("/chat/completions", {"messages": [U], "stop": ["\ud800"]}, "stop[0]"),
    ("/chat/completions", {"messages": [U], "logit_bias": {"49152": 1}}, "logit_bias"),
]


@pytest.mark.parametrize("path,body,param", CLIENT_ERRORS, ids=[c[2] for c in CLIENT_ERRORS])
def test_client_errors_are_400_naming_the_field(e2e_server, path, body, param):
    r = post(e2e_server, {"max_tokens": 4, **body}, path)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == param
    assert "sequence" not in err["message"].lower()
    assert_probes_answer(e2e_server)


# -- huge prompts (item 3) ---------------------------------------------------------------------
class Watch:
    """Polls /health and samples this process's RSS (the server runs in it) while it is on."""

    def __init__(self, server: E2EServer) -> None:
        self.server, self.health, self.rss = server, [0.0], [psutil.Process().memory_info().rss]
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run)

    def _run(self) -> None:
        me = psutil.Process()
        with httpx.Client(timeout=30) as c:
            while not self._done.is_set():
                t = time.monotonic()
                c.get(self.server.root_url + "/health")
                self.health.append(time.monotonic() - t)
                self.rss.append(me.memory_info().rss)
                time.sleep(0.05)  # sampling: /health latency and RSS every 50 ms

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._done.set()
        self._thread.join()
        self.rss.append(psutil.Process().memory_info().rss)


@pytest.fixture
def watch(e2e_server) -> Iterator[Watch]:
    assert_probes_answer(e2e_server)  # warm: the first request's one-time costs stay out
    w = Watch(e2e_server)
    w.start()
    try:
        yield w
    finally:
        w.stop()


MIB = 1 << 20


@pytest.mark.parametrize("clients", [1, 4])
def test_a_15_mib_message_is_refused_cheaply(e2e_server, watch, clients):
    """Before: +1.5 GB and 20-25 s for one; four at once peaked at 9.1 GB."""
    body = json.dumps(
        {"messages": [{"role": "user", "content": "word " * (3 * MIB)}], "max_tokens": 4}
    ).encode()
    before = watch.rss[0]
    started = time.monotonic()
    with ThreadPoolExecutor(clients) as pool:
        answers = list(pool.map(lambda _: post(e2e_server, body), range(clients)))
    took = time.monotonic() - started
    samples = len(watch.rss)
    wait_until(lambda: len(watch.rss) >= samples + 2, "two more RSS samples after the answers")
    for r in answers:
        assert r.status_code == 400, r.text[:300]
        assert r.json()["error"]["code"] == "context_length_exceeded"
    peak = (max(watch.rss) - before) / MIB
    print(
        f"\n{clients} x 15 MiB: {took:.2f} s, RSS peak +{peak:.0f} MiB, slowest /health "
        f"{max(watch.health):.3f} s"
    )
    assert took < 10 * clients
    assert peak < 100 + 100 * clients  # the body, its parsed string and its UTF-8 copy
    assert max(watch.health) < HEALTH_BOUND_S


def test_a_prompt_just_under_the_size_bound_is_tokenized_and_refused(e2e_server, watch):
    """Text under context x the longest token's bytes is tokenized (in the pool) and checked
    exactly; it stays bounded too."""
    body = {"messages": [{"role": "user", "content": "word " * 100_000}], "max_tokens": 4}
    r = post(e2e_server, body)
    assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded"
    assert "100" in r.json()["error"]["message"]  # the exact count: ~100,000 tokens
    assert max(watch.health) < HEALTH_BOUND_S
    assert_probes_answer(e2e_server)


def test_a_15_mib_tool_description_is_refused_cheaply(e2e_server, watch):
    """Tools are rendered too (SmolLM2: in a Hermes system prompt): counted before templating."""
    tool = {
        "type": "function",
        "function": {
            "name": "f",
            "description": "word " * (3 * MIB),
            "parameters": {"type": "object"},
        },
    }
    started = time.monotonic()
    r = post(e2e_server, {**PROBE, "tools": [tool]})
    took = time.monotonic() - started
    assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded"
    print(
        f"\n15 MiB tool description: {took:.2f} s, RSS peak "
        f"+{(max(watch.rss) - watch.rss[0]) / MIB:.0f} MiB"
    )
    assert took < 10
    assert max(watch.rss) - watch.rss[0] < 250 * MIB
    assert max(watch.health) < HEALTH_BOUND_S
