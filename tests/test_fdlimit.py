"""The user's open-file limit survives mlx_lm's import (issue 13 item 4).

mlx_lm.utils calls ``setrlimit(RLIMIT_NOFILE, (2048, 4096))`` when imported: a higher soft
limit dropped to 2048, the hard limit to 4096, and under a hard limit below 4096 the import
failed. Each check runs in a child process with limits of its own.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _room() -> tuple[int, int]:
    """Limits a child may set: below this process's hard limit, which an earlier test of the
    same run may have lowered to 4096 (by importing mlx_lm outside keep_file_limit), and a
    process without CAP_SYS_RESOURCE cannot raise again."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    top = 6000 if hard == resource.RLIM_INFINITY else min(hard, 6000)
    return top - 1000, top


def _child(code: str, limits: tuple[int, int], timeout: float = 120) -> dict:
    prelude = f"import json, resource\nresource.setrlimit(resource.RLIMIT_NOFILE, {limits!r})\n"
    out = subprocess.run(
        [sys.executable, "-c", prelude + code],
        cwd=ROOT,
        check=False,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_inside_keep_file_limit_setrlimit_only_raises_the_soft_limit():
    code = """
from dvai_bridge.fdlimit import keep_file_limit
N = resource.RLIMIT_NOFILE
seen = {}
with keep_file_limit():
    resource.setrlimit(N, (2048, 4096))      # what mlx_lm does: ignored, lower on both
    seen["lowered"] = resource.getrlimit(N)
    resource.setrlimit(N, (5500, 9999))      # a higher soft limit: taken, up to the hard one
    seen["raised"] = resource.getrlimit(N)
    resource.setrlimit(N, (7000, 7000))      # past the hard limit: capped to it
    seen["capped"] = resource.getrlimit(N)
seen["after"] = resource.getrlimit(N)
resource.setrlimit(N, (1000, 6000))          # outside: the real function again
seen["outside"] = resource.getrlimit(N)
print(json.dumps(seen))
"""
    soft, hard = _room()
    code = (
        code.replace("5500, 9999", f"{soft + 500}, {hard + 3999}")
        .replace("7000, 7000", f"{hard + 1000}, {hard + 1000}")
        .replace("1000, 6000", f"1000, {hard}")
    )
    seen = _child(code, (soft, hard))
    assert seen == {
        "lowered": [soft, hard],
        "raised": [soft + 500, hard],
        "capped": [hard, hard],
        "after": [hard, hard],
        "outside": [1000, hard],
    }


def test_importing_mlx_lm_under_it_keeps_a_hard_limit_below_4096():
    code = """
from dvai_bridge.fdlimit import keep_file_limit
with keep_file_limit():
    import mlx_lm.utils
print(json.dumps(resource.getrlimit(resource.RLIMIT_NOFILE)))
"""
    assert _child(code, (1024, 3000)) == [2048, 3000]  # the soft limit mlx_lm wants, raised


@pytest.mark.e2e
def test_a_real_mlx_server_keeps_the_users_file_limit():
    """The MLX bridge on the embedded model, started under (3000, 3000) and under (5000, 6000):
    it starts, answers, and the limits are what they were (before: (2048, 4096) both times,
    and for a user who may not raise the hard limit, no start at all under 3000)."""
    code = """
import httpx
from dvai_bridge import Bridge, StartConfig
bridge = Bridge()
server = bridge.start_blocking(StartConfig(backend="mlx", http_base_port=0, log_level="warning"))
r = httpx.post(server.base_url + "/chat/completions", timeout=120, json={
    "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2})
limits = resource.getrlimit(resource.RLIMIT_NOFILE)
bridge.stop()
print(json.dumps([r.status_code, *limits]))
"""
    assert _child(code, (3000, 3000), timeout=300) == [200, 3000, 3000]
    soft, hard = _room()
    assert _child(code, (soft, hard), timeout=300) == [200, soft, hard]
