"""A short run of benchmarks/soak.py: 16 clients mixing streams, non-streams and hang-ups
against the real server, then a burst past the queue. ``-m "not soak"`` skips it."""

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
    result = soak.run_soak(duration=10, clients=16, burst_size=48, rss_slack_mb=32,
                           burst_content=80)
    assert result["requests"] >= 16 and result["disconnects"] > 0
    assert not result["dropped"] and not result["mixed"] and not result["other"], result
    assert result["verdict"] == {k: True for k in result["verdict"]}, {
        k: result[k] for k in ("verdict", "burst", "rss_mb", "after_burst_health")}
