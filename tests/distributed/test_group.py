"""One model served by two MLX ranks (ring over loopback): the same answers as one process,
batching, the group shown by /health and doctor, and a clean stop of every rank."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from typing import Any

import httpx
import psutil
import pytest

from .conftest import BIN, Served, _env, chat, ring_base_port, start_one_process

PROMPTS = [
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "List three prime numbers and explain why they are prime.",
]
MAX_TOKENS = 40


def _tokens(reply: dict[str, Any]) -> list[tuple[str, float]]:
    return [(t["token"], t["logprob"]) for t in reply["choices"][0]["logprobs"]["content"]]


@pytest.fixture(scope="module")
def one_process() -> dict[str, list[tuple[str, float]]]:
    """Greedy tokens (with logprobs) from the one-process server, which is stopped before the
    group starts (two servers at once would fight over two cores)."""
    served = start_one_process()
    try:
        return {p: _tokens(chat(served, p, MAX_TOKENS, logprobs=True)) for p in PROMPTS}
    finally:
        served.stop()


def test_greedy_equals_one_process_token_for_token(
    one_process: dict[str, list[tuple[str, float]]], group: Served
) -> None:
    for prompt in PROMPTS:
        got = _tokens(chat(group, prompt, MAX_TOKENS, logprobs=True))
        want = one_process[prompt]
        assert [t for t, _ in got] == [t for t, _ in want], prompt
        # Pipeline parallel runs each layer as one process does: the same numbers.
        assert [lp for _, lp in got] == pytest.approx([lp for _, lp in want], abs=1e-4)


def test_four_concurrent_streams_complete(group: Served) -> None:
    results: dict[int, dict[str, Any]] = {}

    def stream(i: int) -> None:
        body = {
            "model": "SmolLM2-135M-Instruct",
            "stream": True,
            "max_tokens": 24,
            "temperature": 0.7,
            "seed": i,
            "messages": [{"role": "user", "content": f"Tell me fact number {i} about cats."}],
        }
        text, finish, done = [], None, False
        with httpx.stream(
            "POST", f"{group.base_url}/chat/completions", json=body, timeout=300
        ) as r:
            assert r.status_code == 200
            for line in r.iter_lines():
                if not line.startswith("data: "):
                    continue
                if line == "data: [DONE]":
                    done = True
                    continue
                chunk = json.loads(line[6:])
                assert "error" not in chunk, chunk
                choice = chunk["choices"][0]
                text.append(choice["delta"].get("content") or "")
                finish = choice.get("finish_reason") or finish
        results[i] = {"text": "".join(text), "finish": finish, "done": done}

    threads = [threading.Thread(target=stream, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert sorted(results) == [0, 1, 2, 3]
    for r in results.values():
        assert r["done"] and r["finish"] in ("stop", "length") and r["text"].strip(), r
    health = group.health().json()
    assert health["running"] == 0 and health["queued"] == 0


def test_prompt_cache_works_across_ranks(group: Served) -> None:
    prompt = "Name the largest ocean on Earth, and say how deep it is at its deepest point."
    first = chat(group, prompt, 8)
    again = chat(group, prompt, 8)
    assert first["choices"][0]["message"] == again["choices"][0]["message"]
    cached = again["usage"]["prompt_tokens_details"]["cached_tokens"]
    assert cached >= again["usage"]["prompt_tokens"] - 1


def test_health_shows_the_group(group: Served) -> None:
    r = group.health()
    assert r.status_code == 200
    assert r.json()["group"] == {"size": 2, "rank": 0, "backend": "ring", "shard": "pipeline"}


def test_doctor_shows_each_rank() -> None:
    port = ring_base_port()
    out = subprocess.run(
        [
            str(BIN / "mlx.launch"),
            "-n",
            "2",
            "--backend",
            "ring",
            "-p",
            str(port),
            "--",
            str(BIN / "dvai-bridge"),
            "doctor",
            "--no-probe",
        ],
        stdin=subprocess.PIPE,
        capture_output=True,
        text=True,
        env=_env(),
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("group")]
    assert sorted(lines) == [f"group     ring, 2 ranks, this is rank {r}" for r in (0, 1)], (
        out.stdout + out.stderr
    )


def test_one_process_doctor_says_no_group() -> None:
    env = {k: v for k, v in _env().items() if not k.startswith(("MLX_", "OMPI_", "PMI_"))}
    out = subprocess.run(
        [str(BIN / "dvai-bridge"), "doctor", "--no-probe"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert "group     none: one process" in out.stdout


def test_sigterm_on_rank_0_stops_every_rank(group: Served) -> None:
    """Last in this module: it ends the shared group. A request in flight finishes first."""
    pids = group.all_pids()
    rank0, rank1 = group.rank_pids()
    reply: dict[str, Any] = {}
    t = threading.Thread(target=lambda: reply.update(chat(group, PROMPTS[2], 24)))
    t.start()
    while group.health().json()["running"] == 0 and t.is_alive():
        time.sleep(0.02)  # the group is other processes: /health is all they offer
    os.kill(rank0, signal.SIGTERM)
    t.join(120)
    assert reply["choices"][0]["finish_reason"] == "length"  # drained, not cut
    codes = group.wait_exit(60)
    assert codes == [0], group.output[-3000:]
    assert "rank 0 stopped the group" in group.output
    assert not [
        p
        for p in pids
        if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE
    ]
    assert rank1 in pids
