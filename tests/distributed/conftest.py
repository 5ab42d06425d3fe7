"""Serving one model from an MLX distributed group: two ranks on this machine, ring over loopback.

Every test here is marked ``e2e`` and ``distributed``: they start real ``dvai-bridge serve``
processes on the embedded SmolLM2 model (its MLX import), under ``mlx.launch`` or with the
environment ``mlx.launch`` gives each rank (``MLX_RANK``, ``MLX_HOSTFILE``), which lets a test
kill one rank without the launcher ending the others first. They need no network beyond
loopback. Each group costs ~10 s to start on a 2-core machine; the tests share where they can.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

HERE = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent
SERVE = [
    str(BIN / "dvai-bridge"),
    "serve",
    "--backend",
    "mlx",
    "--port",
    "0",
    "--log-level",
    "info",
]
START_TIMEOUT_S = 240.0
_SERVING = re.compile(r"Serving (\S+) \(mlx\) at (http://\S+/v1)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.e2e)
            item.add_marker(pytest.mark.distributed)


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def ring_base_port(n: int = 2) -> int:
    """A port p with p .. p+n-1 free: mlx.launch gives rank i port p+i for the ring."""
    for _ in range(50):
        (base,) = free_ports(1)
        socks = []
        try:
            for port in range(base, base + n):
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no run of free ports")


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("DVAI_BRIDGE_BLAS_THREADS", "1")  # see tests/e2e/conftest.py
    env["PYTHONUNBUFFERED"] = "1"
    return env


class Served:
    """Processes serving over HTTP (a group of ranks, or one process), with their output."""

    def __init__(self, procs: list[subprocess.Popen], label: str) -> None:
        self.procs = procs  # the launcher, or each rank
        self.label = label
        self.lines: list[str] = []
        self.base_url = ""
        self.model_id = ""
        self._threads = [threading.Thread(target=self._read, args=(p,), daemon=True) for p in procs]
        for t in self._threads:
            t.start()

    def _read(self, proc: subprocess.Popen) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            self.lines.append(line.rstrip("\n"))

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    @property
    def root_url(self) -> str:
        return self.base_url.removesuffix("/v1")

    def wait_serving(self) -> Served:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            for line in list(self.lines):
                m = _SERVING.search(line)
                if m:
                    self.model_id, self.base_url = m.group(1), m.group(2)
                    return self
            if any(p.poll() is not None for p in self.procs):
                break
            time.sleep(0.1)  # polls the launcher's output, read by another thread, and its exit
        self.stop()
        raise AssertionError(f"{self.label} did not start:\n{self.output[-4000:]}")

    def all_pids(self) -> list[int]:
        """Every process started for this run, children included (for the orphan check)."""
        pids = []
        for p in self.procs:
            pids.append(p.pid)
            try:
                pids += [c.pid for c in psutil.Process(p.pid).children(recursive=True)]
            except psutil.NoSuchProcess:
                pass
        return pids

    def rank_pids(self) -> list[int]:
        """The serving processes, rank 0 first (their command lines end in our flags)."""
        pids = [pid for pid in self.all_pids() if _is_serve(pid)]
        return sorted(pids, key=_rank_of)

    def health(self) -> httpx.Response:
        return httpx.get(f"{self.root_url}/health", timeout=10)

    def wait_exit(self, timeout: float) -> list[int | None]:
        deadline = time.monotonic() + timeout
        for p in self.procs:
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        for t in self._threads:
            t.join(1)
        return [p.poll() for p in self.procs]

    def stop(self) -> None:
        """Kill whatever is left (the tests that stop on purpose check before this)."""
        for pid in reversed(self.all_pids()):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.wait_exit(10)


def _is_serve(pid: int) -> bool:
    try:
        cmd = psutil.Process(pid).cmdline()
    except psutil.NoSuchProcess:
        return False
    return not any(c.endswith("mlx.launch") for c in cmd) and any(
        a.endswith("dvai-bridge") and b == "serve" for a, b in itertools.pairwise(cmd)
    )


def _rank_of(pid: int) -> int:
    try:
        return int(psutil.Process(pid).environ().get("MLX_RANK", "0"))
    except psutil.NoSuchProcess:
        return -1


def _popen(cmd: list[str], env: dict[str, str]) -> subprocess.Popen:
    # stdin stays an open pipe: mlx.launch forwards stdin to the ranks, and busy-loops on a
    # stdin that is at end of file.
    return subprocess.Popen(
        cmd,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        start_new_session=True,
    )


def assert_group_formed(served: Served, shard: str) -> None:
    """Rank 0 serves for a group of 2, each rank holding its part of the model (not two
    servers each with the whole model)."""
    group = served.health().json().get("group")
    assert group == {"size": 2, "rank": 0, "backend": "ring", "shard": shard}, group
    for rank in (0, 1):
        assert re.search(rf"rank {rank} of 2 \(ring\): {shard} parallel", served.output)


def launch_group(*extra: str) -> Served:
    """``mlx.launch -n 2 --backend ring -- dvai-bridge serve ...``, serving."""
    port = ring_base_port()
    cmd = [
        str(BIN / "mlx.launch"),
        "-n",
        "2",
        "--backend",
        "ring",
        "-p",
        str(port),
        "--",
        *SERVE,
        *extra,
    ]
    return Served([_popen(cmd, _env())], "mlx.launch group").wait_serving()


def start_ranks(tmp: Path, *extra: str) -> Served:
    """Two ranks started the way mlx.launch starts them (MLX_RANK, MLX_HOSTFILE), without
    the launcher: so a test can kill one and watch the other."""
    ports = free_ports(2)
    hostfile = tmp / "hosts.json"
    hostfile.write_text(json.dumps([[f"127.0.0.1:{p}"] for p in ports]))
    procs = []
    for rank in range(2):
        env = _env() | {"MLX_RANK": str(rank), "MLX_HOSTFILE": str(hostfile)}
        procs.append(_popen([*SERVE, *extra], env))
    return Served(procs, "two ranks").wait_serving()


def start_one_process(*extra: str) -> Served:
    return Served([_popen([*SERVE, *extra], _env())], "one process").wait_serving()


def chat(served: Served, prompt: str, max_tokens: int, **fields: Any) -> dict[str, Any]:
    body = {
        "model": served.model_id,
        "max_tokens": max_tokens,
        "temperature": 0,
        "messages": [{"role": "user", "content": prompt}],
        **fields,
    }
    r = httpx.post(f"{served.base_url}/chat/completions", json=body, timeout=300)
    assert r.status_code == 200, r.text
    return r.json()


@pytest.fixture(scope="module")
def group() -> Iterator[Served]:
    served = launch_group("--shutdown-grace", "120")  # a stop lets requests in flight finish
    try:
        assert_group_formed(served, "pipeline")
        yield served
    finally:
        served.stop()
