"""A damaged MLX import of the embedded GGUF no longer stops the real server: the next start
finds the damage, imports again (a warning names the folder) and serves the same answers."""

from __future__ import annotations

import os
from pathlib import Path

import httpx
import numpy as np
import pytest

pytest.importorskip("mlx_lm")

from dvai_bridge import Bridge, StartConfig
from dvai_bridge.backends.mlx.gguf_import import cached_import
from dvai_bridge.store.resolve import embedded_default_gguf

ASK = {
    "messages": [{"role": "user", "content": "What is the capital of France?"}],
    "temperature": 0,
    "max_tokens": 12,
}


def _serve_and_ask() -> str:
    bridge = Bridge()
    bound = bridge.start_blocking(StartConfig(backend="mlx", http_base_port=0, log_level="warning"))
    try:
        r = httpx.post(f"{bound.base_url}/chat/completions", json=ASK, timeout=120)
        assert r.status_code == 200, r.text
        return r.json()["choices"][0]["message"]["content"]
    finally:
        bridge.stop()


def _truncate(weights: Path) -> None:
    with weights.open("r+b") as f:
        f.truncate(weights.stat().st_size // 2)


def _overwrite(weights: Path) -> None:
    """Same size, header kept, tensor bytes random: it loads, and would answer garbage."""
    data = bytearray(weights.read_bytes())
    header = 8 + int.from_bytes(data[:8], "little")
    data[header:] = np.random.default_rng(0).bytes(len(data) - header)
    weights.write_bytes(bytes(data))


@pytest.mark.e2e
def test_the_server_starts_on_a_damaged_import_and_answers_as_before(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("DVAI_BRIDGE_CACHE", str(tmp_path))
    monkeypatch.setenv("DVAI_BRIDGE_BLAS_THREADS", os.environ.get("DVAI_BRIDGE_BLAS_THREADS", "1"))
    folder = cached_import(embedded_default_gguf())  # what the first start does
    weights = folder / "model.safetensors"
    before = _serve_and_ask()
    assert "Paris" in before, before
    for damage in (_truncate, _overwrite):
        damage(weights)
        caplog.clear()
        with caplog.at_level("WARNING", logger="dvai_bridge.backends.mlx.gguf_import"):
            assert _serve_and_ask() == before, damage.__name__
        assert f"The MLX import {folder} is damaged" in caplog.text, damage.__name__
        assert [p.name for p in folder.parent.iterdir()] == [folder.name]
