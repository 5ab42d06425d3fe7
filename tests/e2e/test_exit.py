"""`dvai-bridge serve` on the real MLX engine exits cleanly on SIGTERM.

Before the engine thread dropped its MLX thread-local state itself (MLXBackend.close:
mx.clear_streams), about one stop in three aborted after "Stopped." with "terminate called
without an active exception" (exit 134): the thread's C++ thread-locals were destroyed while
the interpreter was finalizing. Three stops in a row make a regression likely to show.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys

import httpx
import pytest


@pytest.mark.parametrize("run", range(3))
def test_serve_stopped_by_sigterm_exits_0_without_an_abort(run):
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "dvai_bridge",
            "serve",
            "--backend",
            "mlx",
            "--port",
            "0",
            "--log-level",
            "warning",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = proc.stdout.readline()
        match = re.search(r"at (http://127\.0\.0\.1:\d+/v1)", line)
        assert match, line + proc.stderr.read()
        r = httpx.post(
            match.group(1) + "/chat/completions",
            timeout=120,
            json={"messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 8},
        )
        assert r.status_code == 200
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=60)
        err = proc.stderr.read()
        assert "terminate called" not in err, err[-2000:]
        assert rc == 0, err[-2000:]
    finally:
        proc.kill()
