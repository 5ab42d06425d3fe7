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
        [
            sys.executable,
            "-m",
            "dvai_bridge",
            "serve",
            "--backend",
            "fake",
            "--port",
            "0",
            "--log-level",
            "warning",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ},
    )
    try:
        line = proc.stdout.readline()
        match = re.search(r"at (http://127\.0\.0\.1:(\d+)/v1)", line)
        assert match, line + proc.stderr.read()
        base = match.group(1)
        r = httpx.post(
            base + "/chat/completions", json={"messages": [{"role": "user", "content": "cli"}]}
        )
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
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1
    assert "Unknown backend 'nosuch'" in proc.stderr


def test_doctor_shows_the_device_its_engine_defaults_and_each_backends_probe(tmp_path):
    env = {**os.environ, "DVAI_BRIDGE_CACHE": str(tmp_path)}  # no cached probe answers
    out = subprocess.run(
        [sys.executable, "-m", "dvai_bridge", "doctor"],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        check=True,
    ).stdout
    assert re.search(r"^mlx +device (cpu|cuda|metal)", out, re.M), out
    assert re.search(r"^engine +defaults on \w+: batch \d+, prefill chunk \d+", out, re.M), out
    assert re.search(r"^probe +mlx: ok: mlx [\d.]+: device", out, re.M), out
    llama = re.search(r"^probe +llama: (.*)$", out, re.M)
    assert llama, out
    import importlib.util

    if importlib.util.find_spec("llama_cpp") is not None:  # scripts/setup.sh --dev built it
        assert llama.group(1).startswith("ok: llama-cpp-python"), out
        assert "decoded" in llama.group(1)
    else:
        assert llama.group(1) == "not installed"


def test_serve_alias_and_strict_model_names_reach_the_server():
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "dvai_bridge",
            "serve",
            "--backend",
            "fake",
            "--port",
            "0",
            "--log-level",
            "warning",
            "--alias",
            "mine",
            "--alias",
            "other",
            "--strict-model-names",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ},
    )
    try:
        line = proc.stdout.readline()
        match = re.search(r"at (http://127\.0\.0\.1:\d+/v1)", line)
        assert match, line + proc.stderr.read()
        base = match.group(1)
        assert [m["id"] for m in httpx.get(base + "/models").json()["data"]] == [
            "fake-model",
            "mine",
            "other",
        ]
        msgs = [{"role": "user", "content": "cli"}]
        assert (
            httpx.post(
                base + "/chat/completions", json={"model": "other", "messages": msgs}
            ).status_code
            == 200
        )
        r = httpx.post(base + "/chat/completions", json={"model": "gpt-4o", "messages": msgs})
        assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
    finally:
        proc.kill()
