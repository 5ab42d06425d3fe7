"""Soak: many clients for minutes against the real server, then a burst past the queue.

The server runs in its own process (``Bridge`` + uvicorn on a free loopback port) over the fake
backend with a small per-token delay, so its memory is measured alone. 16 concurrent clients
(``--clients``) loop for ``--duration`` seconds over a mix of

    chat stream, chat non-stream, completion stream, completion non-stream,
    chat stream with n=2, and streams the client hangs up on after a few chunks,

each with its own text (ASCII, accents, CJK, emoji), so every answer must be exactly its own
echo: a wrong or partial text is cross-talk or a dropped stream. Streams must start with the
role, keep one id, end with finish_reason "stop" and ``[DONE]``. Once per second the server's
RSS and ``/health`` (running, queued) are sampled.

Then: ``/health`` must reach running == 0 and queued == 0 (no leaked sequences), a burst of
``--burst`` simultaneous requests (more than the batch plus the queue hold) must get some 429s,
quickly, and no hang, and the server must stop on SIGTERM with exit status 0.

Verdicts: no dropped or mixed answers, no leak, 429 on overflow, RSS flat after warm-up (RSS at
the end of the soak within ``--rss-slack-mb`` of the RSS at the end of warm-up, the first
quarter; after the burst within twice that). The RSS slope after warm-up is reported too.

    . .venv/bin/activate && python benchmarks/soak.py                 # 3 minutes
    python benchmarks/soak.py --duration 30 --out /tmp/soak.json
    python benchmarks/soak.py --backend mlx   # the real MLX engine, a hostile mix (soak_real.py)

Writes ``benchmarks/results/soak.json`` (``--out``), prints a summary, exits 1 on a failed verdict.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as _dt
import json
import os
import platform
import random
import re
import signal
import statistics
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

SERVER = """
import signal, sys, threading
from dvai_bridge import Bridge, StartConfig
from dvai_bridge.backends.fake import FakeBackend
from dvai_bridge.backends.registry import register_backend

delay, max_queued, max_batch, cache_mb = (float(sys.argv[1]), int(sys.argv[2]),
                                          int(sys.argv[3]), int(sys.argv[4]))
register_backend("soak-fake", lambda c, p: FakeBackend(token_delay=delay))
bridge = Bridge()
server = bridge.start_blocking(StartConfig(
    backend="soak-fake", http_base_port=0, log_level="warning", max_queued=max_queued,
    max_batch_size=max_batch, prompt_cache_mb=cache_mb, shutdown_grace_s=5))
stop = threading.Event()
for sig in (signal.SIGINT, signal.SIGTERM):
    signal.signal(sig, lambda *_: stop.set())
print("READY", server.base_url, flush=True)
while not stop.wait(0.2):
    pass
bridge.stop()
print("STOPPED", flush=True)
"""

WORDS = [
    "alpha",
    "beta",
    "gamma",
    "delta",
    "café",
    "naïve",
    "über",
    "日本語",
    "中文",
    "😀",
    "🚀",
    "ß",
    "Ωmega",
    "x",
    "42",
    "—",
    "line\nbreak",
    "tab\there",
    '"quoted"',
]
KINDS = [
    ("chat_stream", 30),
    ("chat", 20),
    ("completion_stream", 10),
    ("completion", 10),
    ("chat_stream_n2", 10),
    ("disconnect", 20),
]


@dataclass
class Tally:
    sent: Counter[str] = field(default_factory=Counter)
    ok: Counter[str] = field(default_factory=Counter)
    busy: int = 0
    disconnects: int = 0
    mixed: list[str] = field(default_factory=list)  # an answer that is not its own echo
    dropped: list[str] = field(default_factory=list)  # ended without [DONE] / transport error
    other: list[str] = field(default_factory=list)  # any other non-200

    def failures(self) -> int:
        return len(self.mixed) + len(self.dropped) + len(self.other)


def content_for(rng: random.Random, worker: int, i: int) -> str:
    words = rng.choices(WORDS, k=rng.randint(1, 12))
    return f"w{worker} r{i} " + " ".join(words)


async def sse(response: httpx.Response, stop_after: int | None = None) -> tuple[list, bool]:
    """Parsed events and whether ``[DONE]`` came; reads ``stop_after`` chunks at most."""
    got: list = []
    async for line in response.aiter_lines():
        if not line.startswith("data: "):
            continue
        data = line[6:]
        if data == "[DONE]":
            return got, True
        got.append(json.loads(data))
        if stop_after is not None and len(got) >= stop_after:
            return got, False
    return got, False


def check_stream(events: list, done: bool, want: str, n: int, key: str) -> str | None:
    """None if the stream is whole and each choice is exactly ``want``; else what is wrong."""
    if not done:
        return "no [DONE]"
    if any("error" in e for e in events):
        return f"error frame {events[-1]}"
    if len({e["id"] for e in events}) != 1:
        return "the id changed within one stream"
    texts = [""] * n
    finish = [None] * n
    for e in events:
        for c in e["choices"]:
            piece = c["delta"].get("content", "") if key == "delta" else c.get("text", "")
            texts[c["index"]] += piece or ""
            finish[c["index"]] = c.get("finish_reason") or finish[c["index"]]
    if key == "delta" and events[0]["choices"][0]["delta"].get("role") != "assistant":
        return "the first chunk has no role"
    if texts != [want] * n:
        return f"mixed: want {want!r}, got {texts!r}"
    if finish != ["stop"] * n:
        return f"finish_reason {finish}"
    return None


async def one_request(
    c: httpx.AsyncClient, base: str, kind: str, content: str, rng: random.Random, tally: Tally
) -> None:
    want = "echo: " + content
    chat = {"messages": [{"role": "user", "content": content}]}
    comp = {"prompt": content, "max_tokens": 4096}
    tally.sent[kind] += 1
    try:
        if kind in ("chat", "completion"):
            url = base + ("/chat/completions" if kind == "chat" else "/completions")
            r = await c.post(url, json=chat if kind == "chat" else comp)
            if r.status_code == 429:
                tally.busy += 1
                return
            if r.status_code != 200:
                tally.other.append(f"{kind} {r.status_code} {r.text[:200]}")
                return
            choice = r.json()["choices"][0]
            text = choice["message"]["content"] if kind == "chat" else choice["text"]
            if text != want or choice["finish_reason"] != "stop":
                tally.mixed.append(f"{kind}: want {want!r}, got {text!r}")
                return
        else:
            is_chat = kind != "completion_stream"
            n = 2 if kind == "chat_stream_n2" else 1
            body = {**(chat if is_chat else comp), "stream": True, "n": n}
            url = base + ("/chat/completions" if is_chat else "/completions")
            async with c.stream("POST", url, json=body) as r:
                if r.status_code == 429:
                    tally.busy += 1
                    return
                if r.status_code != 200:
                    tally.other.append(f"{kind} {r.status_code}")
                    return
                if kind == "disconnect":
                    got, _ = await sse(r, stop_after=rng.randint(1, 5))
                    tally.disconnects += 1
                    # what came before the hang-up must be a prefix of our own answer
                    text = "".join(e["choices"][0]["delta"].get("content", "") for e in got)
                    if not want.startswith(text):
                        tally.mixed.append(f"disconnect prefix {text!r} of {want!r}")
                        return
                else:
                    got, done = await sse(r)
                    problem = check_stream(got, done, want, n, "delta" if is_chat else "text")
                    if problem:
                        (tally.dropped if problem == "no [DONE]" else tally.mixed).append(
                            f"{kind}: {problem}"
                        )
                        return
    except httpx.HTTPError as exc:
        tally.dropped.append(f"{kind}: {type(exc).__name__}: {exc}")
        return
    tally.ok[kind] += 1


async def worker(base: str, w: int, until: float, tally: Tally, seed: int) -> None:
    rng = random.Random(seed * 1000 + w)
    kinds, weights = zip(*KINDS, strict=False)
    async with httpx.AsyncClient(timeout=120) as c:
        i = 0
        while time.monotonic() < until:
            kind = rng.choices(kinds, weights)[0]
            content = content_for(rng, w, i)
            if kind == "disconnect":
                content += " " + "long " * 60  # so the hang-up comes mid-stream
            await one_request(c, base, kind, content, rng, tally)
            i += 1


async def sample(proc: psutil.Process, root: str, until: float, out: list) -> None:
    t0 = time.monotonic()
    async with httpx.AsyncClient(timeout=10) as c:
        while time.monotonic() < until:
            h = (await c.get(root + "/health")).json()
            out.append(
                {
                    "t": round(time.monotonic() - t0, 2),
                    "rss_mb": round(proc.memory_info().rss / 2**20, 2),
                    "running": h["running"],
                    "queued": h["queued"],
                }
            )
            await asyncio.sleep(1.0)


async def quiescent(root: str, timeout: float = 10.0) -> dict:
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(timeout=10) as c:
        while True:
            h = (await c.get(root + "/health")).json()
            if (h["running"], h["queued"]) == (0, 0) or time.monotonic() > deadline:
                return h
            await asyncio.sleep(0.05)


async def burst(base: str, n: int, content_len: int) -> dict:
    """n simultaneous requests; the ones past batch + queue must get 429, and quickly."""

    async def one(c: httpx.AsyncClient, i: int) -> tuple[int, float, bool]:
        t0 = time.monotonic()
        content = f"burst {i} " + "b" * content_len
        r = await c.post(
            base + "/chat/completions", json={"messages": [{"role": "user", "content": content}]}
        )
        right = (
            r.status_code != 200
            or r.json()["choices"][0]["message"]["content"] == "echo: " + content
        )
        return r.status_code, time.monotonic() - t0, right

    limits = httpx.Limits(max_connections=n + 4, max_keepalive_connections=n + 4)
    async with httpx.AsyncClient(timeout=120, limits=limits) as c:
        results = await asyncio.wait_for(asyncio.gather(*(one(c, i) for i in range(n))), 120)
    statuses = Counter(s for s, _, _ in results)
    busy_s = [t for s, t, _ in results if s == 429]
    served_s = [t for s, t, _ in results if s == 200]
    return {
        "requests": n,
        "statuses": dict(statuses),
        "max_429_latency_s": round(max(busy_s), 3) if busy_s else None,
        "max_served_latency_s": round(max(served_s), 3) if served_s else None,
        "wrong_answers": sum(not right for _, _, right in results),
    }


def start_server(
    delay: float, max_queued: int, max_batch: int, cache_mb: int
) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", SERVER, str(delay), str(max_queued), str(max_batch), str(cache_mb)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    line = proc.stdout.readline()
    match = re.match(r"READY (\S+)", line)
    if not match:
        proc.kill()
        raise RuntimeError(f"the server did not start: {line!r}")
    return proc, match.group(1)


def run_soak(
    duration: float = 180.0,
    clients: int = 16,
    token_delay: float = 0.001,
    max_queued: int = 16,
    max_batch: int = 8,
    burst_size: int = 64,
    rss_slack_mb: float = 16.0,
    seed: int = 1,
    burst_content: int = 300,
    prompt_cache_mb: int = 0,
) -> dict[str, Any]:
    proc, base = start_server(token_delay, max_queued, max_batch, prompt_cache_mb)
    root = base.removesuffix("/v1")
    ps = psutil.Process(proc.pid)
    tally = Tally()
    samples: list[dict] = []
    try:

        async def main() -> tuple[dict, dict, dict]:
            until = time.monotonic() + duration
            await asyncio.gather(
                sample(ps, root, until, samples),
                *(worker(base, w, until, tally, seed) for w in range(clients)),
            )
            after_soak = await quiescent(root)
            b = await burst(base, burst_size, burst_content)
            after_burst = await quiescent(root)
            return after_soak, b, after_burst

        t0 = time.monotonic()
        after_soak, burst_result, after_burst = asyncio.run(main())
        wall = time.monotonic() - t0
        final_rss = ps.memory_info().rss / 2**20
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            exit_code = proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            exit_code = None
    warm = [s for s in samples if s["t"] >= duration / 4] or samples
    warm_rss, soak_end_rss = warm[0]["rss_mb"], warm[-1]["rss_mb"]
    peak = max(s["rss_mb"] for s in samples)
    slope = 0.0  # MiB per minute after warm-up: a leak shows as a steady climb
    if len(warm) >= 3:
        slope = (
            statistics.linear_regression([s["t"] for s in warm], [s["rss_mb"] for s in warm]).slope
            * 60
        )
    served = sum(tally.ok.values())
    verdict = {
        "no_dropped_or_mixed": tally.failures() == 0,
        "no_leak": (after_soak["running"], after_soak["queued"]) == (0, 0)
        and (after_burst["running"], after_burst["queued"]) == (0, 0),
        "overflow_is_429": burst_result["statuses"].get(429, 0) > 0
        and burst_result["wrong_answers"] == 0
        and set(burst_result["statuses"]) <= {200, 429},
        "rss_flat_after_warmup": soak_end_rss - warm_rss <= rss_slack_mb
        and final_rss - warm_rss <= 2 * rss_slack_mb,
        "clean_exit": exit_code == 0,
    }
    return {
        "benchmark": "soak",
        "when": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "machine": {
            "python": platform.python_version(),
            "system": platform.platform(),
            "cpus": os.cpu_count(),
            "load_avg": os.getloadavg(),
        },
        "config": {
            "duration_s": duration,
            "clients": clients,
            "token_delay_s": token_delay,
            "max_queued": max_queued,
            "max_batch_size": max_batch,
            "prompt_cache_mb": prompt_cache_mb,
            "burst": burst_size,
            "burst_content_chars": burst_content,
            "rss_slack_mb": rss_slack_mb,
            "seed": seed,
            "mix": dict(KINDS),
        },
        "wall_s": round(wall, 1),
        "requests": sum(tally.sent.values()),
        "served_ok": served,
        "requests_per_s": round(sum(tally.sent.values()) / duration, 1),
        "by_kind": dict(tally.sent),
        "ok_by_kind": dict(tally.ok),
        "disconnects": tally.disconnects,
        "busy_429_during_soak": tally.busy,
        "dropped": tally.dropped[:20],
        "mixed": tally.mixed[:20],
        "other": tally.other[:20],
        "after_soak_health": after_soak,
        "burst": burst_result,
        "after_burst_health": after_burst,
        "rss_mb": {
            "warmup_end": warm_rss,
            "soak_end": soak_end_rss,
            "peak_during_soak": peak,
            "final_after_burst": round(final_rss, 2),
            "growth_during_soak_after_warmup": round(soak_end_rss - warm_rss, 2),
            "slope_mb_per_min_after_warmup": round(slope, 3),
        },
        "samples": samples,
        "server_exit_code": exit_code,
        "verdict": verdict,
        "passed": all(verdict.values()),
    }


def main() -> None:
    if "--backend" in sys.argv:  # the real engine with a hostile mix: benchmarks/soak_real.py
        i = sys.argv.index("--backend")
        if sys.argv[i + 1] != "fake":
            sys.path.insert(0, str(HERE))
            import soak_real

            soak_real.main(sys.argv[1:i] + sys.argv[i + 2 :])
            return
        del sys.argv[i : i + 2]
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", type=float, default=180.0, help="seconds of mixed load")
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--token-delay", type=float, default=0.001)
    ap.add_argument("--max-queued", type=int, default=16)
    ap.add_argument("--max-batch", type=int, default=8)
    ap.add_argument("--burst", type=int, default=64)
    ap.add_argument("--rss-slack-mb", type=float, default=16.0)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument(
        "--prompt-cache-mb",
        type=int,
        default=0,
        help="the server's prompt cache; 0 (off) so that RSS shows the request path "
        "alone (a cache fills its budget over minutes, which looks like growth)",
    )
    ap.add_argument("--out", type=Path, default=HERE / "results" / "soak.json")
    a = ap.parse_args()
    result = run_soak(
        a.duration,
        a.clients,
        a.token_delay,
        a.max_queued,
        a.max_batch,
        a.burst,
        a.rss_slack_mb,
        a.seed,
        prompt_cache_mb=a.prompt_cache_mb,
    )
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n")
    rss = result["rss_mb"]
    print(
        f"{result['requests']} requests ({result['requests_per_s']}/s), "
        f"{result['served_ok']} whole answers, {result['disconnects']} mid-stream hang-ups, "
        f"{len(result['dropped'])} dropped, {len(result['mixed'])} mixed, "
        f"{len(result['other'])} other errors"
    )
    print(f"burst {result['burst']}")
    print(
        f"RSS MiB: warm-up end {rss['warmup_end']}, end of soak {rss['soak_end']} "
        f"({rss['slope_mb_per_min_after_warmup']:+} MiB/min), peak {rss['peak_during_soak']}, "
        f"after the burst {rss['final_after_burst']}"
    )
    print(f"after: {result['after_burst_health']}; exit {result['server_exit_code']}")
    print("verdict:", result["verdict"], "->", "PASS" if result["passed"] else "FAIL")
    print(f"wrote {a.out}")
    sys.exit(0 if result["passed"] else 1)


if __name__ == "__main__":
    main()
