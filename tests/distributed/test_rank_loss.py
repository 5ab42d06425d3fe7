"""A rank that dies ends the group with a clear error on rank 0, never a hang or an orphan."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import psutil

from .conftest import SERVE, Served, _env, _popen, chat, free_ports, launch_group, start_ranks

GROUP_LOST = "MLX distributed group"


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _wait_health_503(served: Served, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = served.health()
        if r.status_code == 503:
            return r.json()
        time.sleep(0.1)  # the group is other processes: /health is all they offer
    raise AssertionError(f"/health still {r.status_code} {r.text}\n{served.output[-3000:]}")


def _assert_refused(served: Served) -> None:
    r = httpx.post(
        f"{served.base_url}/chat/completions",
        timeout=30,
        json={
            "model": "SmolLM2-135M-Instruct",
            "max_tokens": 4,
            "messages": [{"role": "user", "content": "hi"}],
        },
    )
    assert r.status_code == 503, r.text
    assert r.json()["error"]["code"] == "engine_failed"
    assert GROUP_LOST in r.json()["error"]["message"]


def _stop_rank_0(served: Served) -> None:
    os.kill(served.procs[0].pid, signal.SIGTERM)
    codes = served.wait_exit(60)
    assert codes[0] == 0, served.output[-3000:]


def test_rank_1_killed_mid_stream(tmp_path: Path) -> None:
    served = start_ranks(tmp_path)
    try:
        chat(served, "Say hello.", 4)  # warm
        events: list[Any] = []
        body = {
            "model": "SmolLM2-135M-Instruct",
            "stream": True,
            "max_tokens": 400,
            "temperature": 0,
            "messages": [{"role": "user", "content": "Tell a long story."}],
        }
        with httpx.stream(
            "POST", f"{served.base_url}/chat/completions", json=body, timeout=120
        ) as r:
            assert r.status_code == 200
            for line in r.iter_lines():
                if not line.startswith("data: "):
                    continue
                events.append(line[6:] if line == "data: [DONE]" else json.loads(line[6:]))
                if len(events) == 4:
                    os.kill(served.procs[1].pid, signal.SIGKILL)
        errors = [e for e in events if isinstance(e, dict) and "error" in e]
        assert events[-1] == "[DONE]"
        assert len(errors) == 1 and GROUP_LOST in errors[0]["error"]["message"], events[-3:]
        assert len(events) < 300  # ended by the loss, not by max_tokens

        health = _wait_health_503(served, 10)
        assert health["status"] == "error" and GROUP_LOST in health["reason"]
        assert "another rank is gone" in health["reason"]
        _assert_refused(served)
        _stop_rank_0(served)
    finally:
        served.stop()


def test_rank_1_killed_while_idle_is_noticed(tmp_path: Path) -> None:
    served = start_ranks(tmp_path)
    try:
        assert served.health().status_code == 200
        os.kill(served.procs[1].pid, signal.SIGKILL)
        started = time.monotonic()
        health = _wait_health_503(served, 15)  # the heartbeat runs every second while idle
        print(f"\n[distributed] idle loss seen by /health after {time.monotonic() - started:.2f}s")
        assert GROUP_LOST in health["reason"]
        _assert_refused(served)
        _stop_rank_0(served)
    finally:
        served.stop()


def test_rank_0_killed_ends_rank_1(tmp_path: Path) -> None:
    served = start_ranks(tmp_path)
    try:
        os.kill(served.procs[0].pid, signal.SIGKILL)
        codes = served.wait_exit(30)
        assert codes[1] == 1, served.output[-3000:]  # it says the group was lost, and exits
        assert "rank 0 is gone" in served.output
    finally:
        served.stop()


def test_under_mlx_launch_killing_rank_1_ends_the_group() -> None:
    served = launch_group()
    try:
        pids = served.all_pids()
        rank0, rank1 = served.rank_pids()
        stream_error: list[str] = []

        def stream() -> None:
            body = {
                "model": "SmolLM2-135M-Instruct",
                "stream": True,
                "max_tokens": 400,
                "messages": [{"role": "user", "content": "Tell a long story."}],
            }
            try:
                with httpx.stream(
                    "POST", f"{served.base_url}/chat/completions", json=body, timeout=120
                ) as r:
                    for line in r.iter_lines():
                        if '"error"' in line:
                            stream_error.append(line)
            except httpx.HTTPError as exc:  # rank 0 went away mid-answer
                stream_error.append(repr(exc))

        t = threading.Thread(target=stream)
        t.start()
        while served.health().json()["running"] == 0:
            time.sleep(0.02)  # the group is other processes: /health is all they offer
        os.kill(rank1, signal.SIGKILL)
        t.join(120)
        assert stream_error, "the stream ended as if nothing happened"
        # mlx.launch ends the other ranks when one fails (and exits 0 itself, whatever the
        # ranks did); rank 0 said why before it drained and stopped.
        codes = served.wait_exit(60)
        assert codes[0] is not None, served.output[-3000:]
        assert f"{GROUP_LOST} (ring, 2 ranks) stopped working" in served.output
        assert not [p for p in pids if _alive(p)], "orphan processes"
        assert rank0 in pids
    finally:
        served.stop()


def test_hung_rank_1_is_declared_lost_after_the_group_timeout(tmp_path: Path) -> None:
    """SIGSTOP: the process lives and its kernel still acknowledges, so no socket closes; the
    collective would wait forever. The watchdog ends it after --group-timeout."""
    served = start_ranks(tmp_path, "--group-timeout", "3")
    rank1 = served.procs[1].pid
    try:
        chat(served, "Say hello.", 4)  # warm
        events: list[Any] = []
        body = {
            "model": served.model_id,
            "stream": True,
            "max_tokens": 400,
            "messages": [{"role": "user", "content": "Tell a long story."}],
        }
        started = 0.0
        with httpx.stream(
            "POST", f"{served.base_url}/chat/completions", json=body, timeout=120
        ) as r:
            for line in r.iter_lines():
                if line.startswith("data: {"):
                    events.append(json.loads(line[6:]))
                    if len(events) == 4:
                        os.kill(rank1, signal.SIGSTOP)
                        started = time.monotonic()
        took = time.monotonic() - started
        errors = [e for e in events if "error" in e]
        assert len(errors) == 1, events[-3:]
        assert "no answer from the group for 3 s" in errors[0]["error"]["message"]
        assert 3 <= took < 30
        health = served.health()
        assert health.status_code == 503 and GROUP_LOST in health.json()["reason"]
        _assert_refused(served)
        os.kill(rank1, signal.SIGKILL)
        _stop_rank_0(served)
    finally:
        if _alive(rank1):
            os.kill(rank1, signal.SIGCONT)
        served.stop()


def test_hung_rank_0_makes_rank_1_exit(tmp_path: Path) -> None:
    served = start_ranks(tmp_path, "--group-timeout", "3")
    rank0 = served.procs[0].pid
    try:
        os.kill(rank0, signal.SIGSTOP)
        assert served.procs[1].wait(30) == 1, served.output[-3000:]
        assert "exiting: The MLX distributed group" in served.output
        assert "no answer from the group for 3 s" in served.output
    finally:
        os.kill(rank0, signal.SIGCONT)
        served.stop()


def test_a_group_refuses_to_serve_unbatched(tmp_path: Path) -> None:
    """--max-batch-size 1 would run sequences outside the mirrored batch: refused once the
    model is loaded; rank 0 frees it on its engine thread and tells rank 1 to stop (it exited
    with SIGABRT about 1 run in 6 when it left the group's model unreleased)."""
    ports = free_ports(2)
    hostfile = tmp_path / "hosts.json"
    hostfile.write_text(json.dumps([[f"127.0.0.1:{p}"] for p in ports]))
    procs = [
        _popen(
            [*SERVE, "--max-batch-size", "1"],
            _env() | {"MLX_RANK": str(r), "MLX_HOSTFILE": str(hostfile)},
        )
        for r in range(2)
    ]
    served = Served(procs, "unbatched group")
    try:
        assert procs[0].wait(120) == 1
        assert procs[1].wait(30) == 0  # stopped by rank 0, not lost
        served.wait_exit(5)
        assert "max_batch_size must be at least 2" in served.output
    finally:
        served.stop()
