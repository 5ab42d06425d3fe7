"""``dvai-bridge serve --model <repo id>`` on first start: a download bar, then load, then
serve (the real SmolLM2 checkpoint from the fake Hub, on the real MLX backend)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys

import httpx
import pytest

from .conftest import MLX_REPO

pytest.importorskip("mlx_lm")


@pytest.mark.e2e
def test_serve_shows_the_download_bar_on_first_start(hub):
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "dvai_bridge",
            "serve",
            "--backend",
            "mlx",
            "--model",
            MLX_REPO,
            "--port",
            "0",
            "--log-level",
            "warning",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ),
    )
    try:
        line = proc.stdout.readline()
        match = re.search(r"at (http://127\.0\.0\.1:\d+/v1)", line)
        assert match, line + proc.stderr.read()
        assert httpx.get(match.group(1) + "/models").json()["data"][0]["id"] == MLX_REPO
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0
        err = proc.stderr.read()
        assert re.search(rf"{re.escape(MLX_REPO)} .*100\.0/100\.0 MB", err), err
        assert err.index("100.0/100.0 MB") < err.index("[load]") < err.index("Press Ctrl-C")
    finally:
        proc.kill()
