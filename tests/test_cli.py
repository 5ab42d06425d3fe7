"""``dvai-bridge serve`` as a user runs it: prints the base_url, serves, stops on a signal."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys

import httpx
import pytest


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_serve_prints_the_base_url_and_stops_cleanly_on_a_signal(sig):
    proc = subprocess.Popen(
        [sys.executable, "-m", "dvai_bridge", "serve", "--backend", "fake", "--port", "0",
         "--log-level", "warning"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ})
    try:
        line = proc.stdout.readline()
        match = re.search(r"at (http://127\.0\.0\.1:(\d+)/v1)", line)
        assert match, line + proc.stderr.read()
        base = match.group(1)
        r = httpx.post(base + "/chat/completions",
                       json={"messages": [{"role": "user", "content": "cli"}]})
        assert r.json()["choices"][0]["message"]["content"] == "echo: cli"
        proc.send_signal(sig)
        assert proc.wait(timeout=15) == 0
        assert "Stopped." in proc.stderr.read()
        with pytest.raises(httpx.ConnectError):
            httpx.get(base.removesuffix("/v1") + "/health")
    finally:
        proc.kill()


def test_serve_with_an_unknown_backend_fails_with_a_clear_message():
    proc = subprocess.run(
        [sys.executable, "-m", "dvai_bridge", "serve", "--backend", "nosuch", "--port", "0"],
        capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert "Unknown backend 'nosuch'" in proc.stderr
