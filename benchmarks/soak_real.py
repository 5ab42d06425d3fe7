"""Soak on the real MLX engine with a hostile mix: issue 13's items 1-6 among normal traffic.

The server (``Bridge`` + uvicorn, MLX on the embedded SmolLM2-135M-Instruct) runs in its own
process so that its RSS is measured alone. ``--clients`` concurrent clients loop for
``--duration`` seconds; each request is normal or hostile:

    normal   greedy chat (must equal the answer taken before the soak, exactly), greedy chat
             stream (same, and whole: role first, one id, finish_reason, [DONE]), greedy
             completion, sampled chat (temperature 0.8, no seed: 200 and not empty), and
             streams the client hangs up on after a few chunks
    hostile  (in turn) 1: top_k over the vocabulary; 2: a completion of 20,000 token-id prompts;
             3: a 4 MiB message; 4: a connection that sends half a request and holds it;
             5: ten small requests on one keep-alive connection; 6: sixteen streams hung up on
             while queued, and one request of 4 prompts x n 16

A hostile request may be refused (4xx) but never answered 5xx, never kill the server and never
change another request's answer. Once per second the server's RSS and /health (with its latency,
from its own client) are sampled.

Verdicts: no crash, no 5xx, no cross-request failure (a greedy answer that differs, a stream
that is not whole, a sampled answer that is empty), /health always under 1 s, nothing left
running after, RSS bounded (the peak within ``--rss-bound-mb`` of the RSS at the start; the
growth after warm-up, the first quarter, is reported as MiB per minute).

    .venv/bin/python benchmarks/soak.py --backend mlx               # 3 minutes
    .venv/bin/python benchmarks/soak_real.py --duration 60 --out /tmp/soak_real.json
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
import json, signal, sys, threading
from dvai_bridge import Bridge, StartConfig

bridge = Bridge()
server = bridge.start_blocking(StartConfig(**json.loads(sys.argv[1])))
stop = threading.Event()
for sig in (signal.SIGINT, signal.SIGTERM):
    signal.signal(sig, lambda *_: stop.set())
print("READY", server.base_url, flush=True)
while not stop.wait(0.2):
    pass
bridge.stop()
print("STOPPED", flush=True)
"""

PROMPTS = [
    "What is the capital of France?",
    "Name three colors.",
    "Say hello in Spanish.",
    "What is 2 + 2?",
]
MAX_TOKENS = 8
NORMAL = [
    ("chat_greedy", 25),
    ("chat_stream_greedy", 20),
    ("completion_greedy", 10),
    ("chat_sampled", 15),
    ("disconnect", 10),
]
HOSTILE = [
    "h1_top_k",
    "h2_many_prompts",
    "h3_huge_message",
    "h4_half_request",
    "h5_keepalive",
    "h6_queued_hangups",
    "h6_one_takes_the_queue",
]  # taken in turn: each kind is sent


@dataclass
class Tally:
    sent: Counter[str] = field(default_factory=Counter)
    ok: Counter[str] = field(default_factory=Counter)
    statuses: Counter[str] = field(default_factory=Counter)
    busy: int = 0
    server_errors: list[str] = field(default_factory=list)  # any 5xx
    cross: list[str] = field(default_factory=list)  # an answer another request changed
    transport: list[str] = field(default_factory=list)  # a dropped connection
    keepalive_max_s: float = 0.0

    def hostile(self) -> int:
        return sum(n for k, n in self.sent.items() if k.startswith("h"))

    def failures(self) -> int:
        return len(self.server_errors) + len(self.cross) + len(self.transport)


def chat_body(prompt: str, **kw: Any) -> dict[str, Any]:
    return {
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": MAX_TOKENS,
        "temperature": 0,
        **kw,
    }


async def sse(response: httpx.Response, stop_after: int | None = None) -> tuple[list, bool]:
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


def stream_problem(events: list, done: bool, want: str) -> str | None:
    if not done:
        return "no [DONE]"
    if any("error" in e for e in events):
        return f"error frame {events[-1]}"
    if len({e["id"] for e in events}) != 1:
        return "the id changed within one stream"
    if events[0]["choices"][0]["delta"].get("role") != "assistant":
        return "the first chunk has no role"
    text = "".join(e["choices"][0]["delta"].get("content") or "" for e in events if e["choices"])
    finish = [e["choices"][0]["finish_reason"] for e in events if e["choices"]][-1]
    if text != want or finish not in ("stop", "length"):
        return f"want {want!r}, got {text!r} ({finish})"
    return None


class Mix:
    def __init__(self, base: str, baselines: dict[str, dict[str, str]], tally: Tally) -> None:
        self.base, self.root = base, base.removesuffix("/v1")
        self.turn = 0  # the next hostile kind
        self.port = int(self.root.rsplit(":", 1)[1])
        self.baselines, self.tally = baselines, tally

    def status(self, kind: str, r: httpx.Response) -> bool:
        """Count it; True when it is a 200. 5xx are failures whatever the kind."""
        self.tally.statuses[f"{kind} {r.status_code}"] += 1
        if r.status_code == 429:
            self.tally.busy += 1
        elif r.status_code >= 500:
            self.tally.server_errors.append(f"{kind}: {r.status_code} {r.text[:200]}")
        return r.status_code == 200

    async def normal(
        self, c: httpx.AsyncClient, kind: str, prompt: str, rng: random.Random
    ) -> None:
        want = self.baselines["chat"][prompt]
        if kind == "chat_greedy":
            r = await c.post(self.base + "/chat/completions", json=chat_body(prompt))
            if self.status(kind, r):
                got = r.json()["choices"][0]["message"]["content"]
                if got != want:
                    self.tally.cross.append(f"{kind}: want {want!r}, got {got!r}")
                    return
        elif kind == "completion_greedy":
            want = self.baselines["completion"][prompt]
            r = await c.post(
                self.base + "/completions",
                json={"prompt": prompt, "max_tokens": MAX_TOKENS, "temperature": 0},
            )
            if self.status(kind, r):
                got = r.json()["choices"][0]["text"]
                if got != want:
                    self.tally.cross.append(f"{kind}: want {want!r}, got {got!r}")
                    return
        elif kind == "chat_sampled":
            r = await c.post(
                self.base + "/chat/completions", json=chat_body(prompt, temperature=0.8)
            )
            if self.status(kind, r) and not r.json()["choices"][0]["message"]["content"]:
                self.tally.cross.append(f"{kind}: an empty answer")
                return
        else:  # chat_stream_greedy, disconnect
            body = chat_body(prompt, stream=True)
            if kind == "disconnect":
                body["max_tokens"] = 200
            async with c.stream("POST", self.base + "/chat/completions", json=body) as r:
                if not self.status(kind, r):
                    await r.aread()
                    return
                if kind == "disconnect":
                    await sse(r, stop_after=rng.randint(1, 4))
                else:
                    events, done = await sse(r)
                    problem = stream_problem(events, done, want)
                    if problem:
                        self.tally.cross.append(f"{kind}: {problem}")
                        return
        self.tally.ok[kind] += 1

    async def hostile(self, c: httpx.AsyncClient, kind: str) -> None:
        if kind == "h1_top_k":
            r = await c.post(
                self.base + "/chat/completions", json=chat_body("Hi", temperature=0.8, top_k=50_000)
            )
            self.status(kind, r)
        elif kind == "h2_many_prompts":
            body = b'{"max_tokens": 1, "prompt": [' + b"[1]," * 19_999 + b"[1]]}"
            r = await c.post(
                self.base + "/completions",
                content=body,
                headers={"content-type": "application/json"},
            )
            self.status(kind, r)
        elif kind == "h3_huge_message":
            r = await c.post(self.base + "/chat/completions", json=chat_body("z " * (2 << 20)))
            self.status(kind, r)
        elif kind == "h4_half_request":
            await self.half_request()
        elif kind == "h5_keepalive":
            for _ in range(10):
                t0 = time.monotonic()
                r = await c.get(self.base + "/models")
                self.tally.keepalive_max_s = max(self.tally.keepalive_max_s, time.monotonic() - t0)
                self.status(kind, r)
        elif kind == "h6_queued_hangups":
            await self.queued_hangups(c)
        elif kind == "h6_one_takes_the_queue":
            r = await c.post(
                self.base + "/completions",
                json={"prompt": ["Hi"] * 4, "n": 16, "max_tokens": 2, "temperature": 0.8},
            )
            self.status(kind, r)
        self.tally.ok[kind] += 1

    async def half_request(self) -> None:
        """Item 4: headers that never end, held for 3 s, then dropped."""
        _, writer = await asyncio.open_connection("127.0.0.1", self.port)
        writer.write(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100\r\n"
        )
        await writer.drain()
        await asyncio.sleep(3)
        writer.close()
        try:
            await writer.wait_closed()
        except OSError:
            pass

    async def queued_hangups(self, c: httpx.AsyncClient) -> None:
        """Item 6: sixteen streams opened together and dropped before they finish."""

        async def one() -> None:
            async with c.stream(
                "POST",
                self.base + "/chat/completions",
                json=chat_body("Tell me a story.", max_tokens=200, stream=True),
            ) as r:
                self.status("h6_queued_hangups", r)

        await asyncio.gather(*(one() for _ in range(16)))


async def worker(mix: Mix, w: int, until: float, hostile_share: float, seed: int) -> None:
    rng = random.Random(seed * 1000 + w)
    normal_kinds, normal_w = zip(*NORMAL, strict=False)
    limits = httpx.Limits(max_connections=32, max_keepalive_connections=4)
    async with httpx.AsyncClient(timeout=180, limits=limits) as c:
        while time.monotonic() < until:
            hostile = rng.random() < hostile_share
            if hostile:
                kind, mix.turn = HOSTILE[mix.turn % len(HOSTILE)], mix.turn + 1
            else:
                kind = rng.choices(normal_kinds, normal_w)[0]
            mix.tally.sent[kind] += 1
            try:
                if hostile:
                    await mix.hostile(c, kind)
                else:
                    await mix.normal(c, kind, rng.choice(PROMPTS), rng)
            except httpx.HTTPError as exc:
                mix.tally.transport.append(f"{kind}: {type(exc).__name__}: {exc}")


async def sample(proc: psutil.Process, root: str, until: float, out: list) -> None:
    t0 = time.monotonic()
    async with httpx.AsyncClient(timeout=30) as c:
        while time.monotonic() < until:
            s = time.monotonic()
            try:
                h = (await c.get(root + "/health")).json()
            except httpx.HTTPError as exc:
                h = {"running": None, "queued": None, "error": type(exc).__name__}
            took = time.monotonic() - s
            out.append(
                {
                    "t": round(s - t0, 2),
                    "health_s": round(took, 3),
                    "rss_mb": round(proc.memory_info().rss / 2**20, 1),
                    "running": h.get("running"),
                    "queued": h.get("queued"),
                }
            )
            await asyncio.sleep(max(0.0, 1.0 - took))


async def baselines(base: str) -> dict[str, dict[str, str]]:
    out: dict[str, dict[str, str]] = {"chat": {}, "completion": {}}
    async with httpx.AsyncClient(timeout=120) as c:
        for p in PROMPTS:
            r = await c.post(base + "/chat/completions", json=chat_body(p))
            out["chat"][p] = r.json()["choices"][0]["message"]["content"]
            r = await c.post(
                base + "/completions",
                json={"prompt": p, "max_tokens": MAX_TOKENS, "temperature": 0},
            )
            out["completion"][p] = r.json()["choices"][0]["text"]
    return out


async def quiescent(root: str, timeout: float = 15.0) -> dict:
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(timeout=10) as c:
        while True:
            h = (await c.get(root + "/health")).json()
            if (h["running"], h["queued"]) == (0, 0) or time.monotonic() > deadline:
                return h
            await asyncio.sleep(0.05)


def start_server(config: dict[str, Any]) -> tuple[subprocess.Popen, str]:
    env = dict(os.environ)
    env.setdefault("DVAI_BRIDGE_BLAS_THREADS", "1")
    proc = subprocess.Popen(
        [sys.executable, "-c", SERVER, json.dumps(config)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env=env,
    )
    line = proc.stdout.readline()
    match = re.match(r"READY (\S+)", line)
    if not match:
        proc.kill()
        raise RuntimeError(f"the server did not start: {line!r}")
    return proc, match.group(1)


def run_real_soak(
    duration: float = 180.0,
    clients: int = 8,
    hostile_share: float = 0.15,
    rss_bound_mb: float = 512.0,
    seed: int = 1,
    max_batch: int = 8,
    max_queued: int = 64,
    prompt_cache_mb: int = 64,
) -> dict[str, Any]:
    config = {
        "backend": "mlx",
        "http_base_port": 0,
        "log_level": "error",
        "context_size": 1024,
        "max_batch_size": max_batch,
        "max_queued": max_queued,
        "prompt_cache_mb": prompt_cache_mb,
    }
    proc, base = start_server(config)
    root = base.removesuffix("/v1")
    ps = psutil.Process(proc.pid)
    tally = Tally()
    samples: list[dict] = []
    after: dict = {}
    try:

        async def main() -> dict:
            want = await baselines(base)
            mix = Mix(base, want, tally)
            until = time.monotonic() + duration
            await asyncio.gather(
                sample(ps, root, until, samples),
                *(worker(mix, w, until, hostile_share, seed) for w in range(clients)),
            )
            return await quiescent(root)

        t0 = time.monotonic()
        after = asyncio.run(main())
        wall = time.monotonic() - t0
        final_rss = ps.memory_info().rss / 2**20
    finally:
        alive = proc.poll() is None
        proc.send_signal(signal.SIGTERM)
        try:
            exit_code = proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            exit_code = None
    start_rss = samples[0]["rss_mb"]  # after the baselines, before the mix
    warm = [s for s in samples if s["t"] >= duration / 4] or samples
    warm_rss, soak_end_rss = warm[0]["rss_mb"], warm[-1]["rss_mb"]
    peak = max(s["rss_mb"] for s in samples)
    slowest_health = max(s["health_s"] for s in samples)
    slope = 0.0
    if len(warm) >= 3:
        slope = (
            statistics.linear_regression([s["t"] for s in warm], [s["rss_mb"] for s in warm]).slope
            * 60
        )
    verdict = {
        "no_crash": alive,
        "no_5xx": not tally.server_errors,
        "no_cross_request_failure": not tally.cross and not tally.transport,
        "health_under_1s": slowest_health < 1.0,
        "nothing_left_running": (after.get("running"), after.get("queued")) == (0, 0),
        "rss_bounded": peak - start_rss <= rss_bound_mb,
    }
    return {
        "benchmark": "soak_real",
        "when": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "machine": {
            "python": platform.python_version(),
            "system": platform.platform(),
            "cpus": os.cpu_count(),
            "load_avg": os.getloadavg(),
        },
        "config": {
            **config,
            "duration_s": duration,
            "clients": clients,
            "hostile_share": hostile_share,
            "rss_bound_mb": rss_bound_mb,
            "seed": seed,
            "normal": dict(NORMAL),
            "hostile": HOSTILE,
        },
        "wall_s": round(wall, 1),
        "requests": sum(tally.sent.values()),
        "hostile_requests": tally.hostile(),
        "by_kind": dict(tally.sent),
        "ok_by_kind": dict(tally.ok),
        "statuses": dict(sorted(tally.statuses.items())),
        "busy_429": tally.busy,
        "server_errors": tally.server_errors[:20],
        "cross_request": tally.cross[:20],
        "transport": tally.transport[:20],
        "keepalive_slowest_s": round(tally.keepalive_max_s, 3),
        "slowest_health_s": round(slowest_health, 3),
        "after_health": after,
        "rss_mb": {
            "start": start_rss,
            "warmup_end": warm_rss,
            "soak_end": soak_end_rss,
            "peak": peak,
            "final": round(final_rss, 1),
            "slope_mb_per_min_after_warmup": round(slope, 2),
        },
        "samples": samples,
        "server_exit_code": exit_code,
        "verdict": verdict,
        "passed": all(verdict.values()),
    }


def summary(result: dict[str, Any]) -> str:
    rss = result["rss_mb"]
    return (
        f"{result['requests']} requests, {result['hostile_requests']} hostile; "
        f"{len(result['server_errors'])} 5xx, {len(result['cross_request'])} cross-request "
        f"failures, {len(result['transport'])} dropped; RSS MiB peak {rss['peak']}, final "
        f"{rss['final']} (start {rss['start']}, warm-up end {rss['warmup_end']}, "
        f"{rss['slope_mb_per_min_after_warmup']:+} MiB/min); slowest /health "
        f"{result['slowest_health_s']} s; keep-alive slowest "
        f"{result['keepalive_slowest_s']} s"
    )


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", type=float, default=180.0, help="seconds of mixed load")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--hostile-share", type=float, default=0.15)
    ap.add_argument(
        "--rss-bound-mb",
        type=float,
        default=512.0,
        help="the peak RSS may exceed the RSS at the start by this much",
    )
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", type=Path, default=HERE / "results" / "soak_real.json")
    a = ap.parse_args(argv)
    result = run_real_soak(a.duration, a.clients, a.hostile_share, a.rss_bound_mb, a.seed)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n")
    print(summary(result))
    print("statuses:", result["statuses"])
    for key in ("server_errors", "cross_request", "transport"):
        for line in result[key][:5]:
            print(f"  {key}: {line}")
    print("verdict:", result["verdict"], "->", "PASS" if result["passed"] else "FAIL")
    print(f"wrote {a.out}")
    sys.exit(0 if result["passed"] else 1)


if __name__ == "__main__":
    main()
