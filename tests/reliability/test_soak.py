"""Short runs of benchmarks/soak.py (fake backend: 16 clients mixing streams, non-streams and
hang-ups, then a burst past the queue) and of benchmarks/soak_real.py (the real MLX engine with
issue 13's hostile items 1-6 among normal traffic). ``-m "not soak"`` skips them."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

SOAK = Path(__file__).resolve().parents[2] / "benchmarks" / "soak.py"


@pytest.fixture(scope="module")
def soak():
    spec = importlib.util.spec_from_file_location("dvai_soak", SOAK)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look themselves up there
    spec.loader.exec_module(module)
    return module


@pytest.mark.soak
def test_short_soak_keeps_every_stream_whole_and_leaks_nothing(soak):
    result = soak.run_soak(
        duration=10, clients=16, burst_size=48, rss_slack_mb=32, burst_content=80
    )
    assert result["requests"] >= 16 and result["disconnects"] > 0
    assert not result["dropped"] and not result["mixed"] and not result["other"], result
    assert result["verdict"] == dict.fromkeys(result["verdict"], True), {
        k: result[k] for k in ("verdict", "burst", "rss_mb", "after_burst_health")
    }


@pytest.fixture(scope="module")
def soak_real():
    spec = importlib.util.spec_from_file_location("dvai_soak_real", SOAK.with_name("soak_real.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.soak
@pytest.mark.e2e
def test_short_hostile_soak_on_mlx_hurts_no_other_request(soak_real):
    """Issue 13's items 1-6 among normal traffic on the real MLX engine, for a minute."""
    result = soak_real.run_real_soak(duration=60, clients=6, hostile_share=0.2)
    print("\n[soak_real]", soak_real.summary(result))
    assert result["hostile_requests"] >= 7 and result["requests"] >= 30, result["by_kind"]
    assert result["verdict"] == dict.fromkeys(result["verdict"], True), {
        k: result[k]
        for k in (
            "verdict",
            "server_errors",
            "cross_request",
            "transport",
            "statuses",
            "rss_mb",
            "slowest_health_s",
            "after_health",
        )
    }
