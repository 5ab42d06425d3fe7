"""Client libraries against one real bridge (MLX, the embedded SmolLM2-135M-Instruct).

The libraries live in their own venv, ``.venv-clients`` (scripts/setup.sh --dev builds it from
requirements.txt and no-deps.txt here), because their pins conflict with ours and with each
other's; each library's driver (drivers/*.py) runs there as a subprocess against the server
this package starts once. Every test here is marked ``clients`` and ``e2e``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

CLIENTS_DIR = Path(__file__).resolve().parent
ROOT = CLIENTS_DIR.parents[1]
VENV_PYTHON = ROOT / ".venv-clients" / "bin" / "python"
DRIVER_TIMEOUT_S = 300


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if CLIENTS_DIR in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.clients)
            item.add_marker(pytest.mark.e2e)


@pytest.fixture(scope="session")
def clients_server() -> Iterator[tuple[str, str]]:
    """(base_url, served model id) of one MLX bridge for the whole package."""
    if not VENV_PYTHON.exists():
        pytest.skip(".venv-clients is missing: run scripts/setup.sh --dev")
    from dvai_bridge import Bridge, StartConfig

    os.environ.setdefault("DVAI_BRIDGE_BLAS_THREADS", "1")  # as tests/e2e/conftest.py
    bridge = Bridge()
    bound = bridge.start_blocking(StartConfig(backend="mlx", http_base_port=0, log_level="warning"))
    try:
        yield bound.base_url, bound.model_id
    finally:
        bridge.stop()


@pytest.fixture(scope="session")
def client_results(clients_server: tuple[str, str]) -> Callable[[str], dict[str, str]]:
    """``client_results(driver)``: the driver's {cell: "ok" | "FAIL: ..."}, run once."""
    cache: dict[str, dict[str, str]] = {}

    def get(driver: str) -> dict[str, str]:
        if driver not in cache:
            env = {
                **os.environ,
                "LITELLM_LOCAL_MODEL_COST_MAP": "True",
                "OPENAI_AGENTS_DISABLE_TRACING": "1",
                "PYTHONPATH": "",
            }
            started = time.monotonic()
            proc = subprocess.run(
                [str(VENV_PYTHON), str(CLIENTS_DIR / "drivers" / f"{driver}.py"), *clients_server],
                capture_output=True,
                text=True,
                env=env,
                cwd=CLIENTS_DIR / "drivers",
                timeout=DRIVER_TIMEOUT_S,
                check=False,
            )
            lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULTS ")]
            assert lines, (
                f"{driver} printed no results (rc {proc.returncode}):\n"
                f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
            )
            cache[driver] = json.loads(lines[-1].removeprefix("RESULTS "))
            print(f"\n[clients] {driver}: {time.monotonic() - started:.1f}s", file=sys.stderr)
        return cache[driver]

    return get
