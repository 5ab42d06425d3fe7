"""Store tests: a fake Hub on loopback serving the real SmolLM2 MLX checkpoint, and a fresh
HF cache and GGUF cache per test (``HF_HUB_CACHE``, ``DVAI_BRIDGE_CACHE``)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from dvai_bridge.store import fetch

from .fakehub import FakeHub, serve_hub, smollm2_mlx_folder

MLX_REPO = "mlx-community/SmolLM2-135M-Instruct"
GGUF_REPO = "second-state/Tiny-GGUF"
GGUF_NAME = "tiny-q4.gguf"
GGUF_SIZE = 3 << 20


@pytest.fixture(scope="session")
def tiny_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small file with a GGUF header: downloads do not look inside it."""
    folder = tmp_path_factory.mktemp("gguf-repo")
    path = folder / GGUF_NAME
    path.write_bytes(b"GGUF" + os.urandom(GGUF_SIZE - 4))
    return path


@pytest.fixture(scope="session")
def _server(tiny_gguf: Path) -> FakeHub:
    server = serve_hub()
    server.add_repo(MLX_REPO, smollm2_mlx_folder())  # built before any test moves the caches
    server.add_repo(GGUF_REPO, tiny_gguf.parent)
    server.add_file(GGUF_NAME, tiny_gguf)
    yield server
    server.stop()


@pytest.fixture
def hub(_server: FakeHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeHub:
    """The fake Hub, healthy, with HF_ENDPOINT pointing at it and empty caches."""
    _server.heal()
    _server.missing.clear()
    _server.gated.clear()
    _server.requests.clear()
    monkeypatch.setenv("HF_ENDPOINT", _server.url)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("DVAI_BRIDGE_CACHE", str(tmp_path / "dvai"))
    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(fetch, "BACKOFF_S", 0.01)
    return _server


@pytest.fixture(scope="session")
def _template_cache(_server: FakeHub, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An HF cache holding the MLX repo and the GGUF file, downloaded once by the store."""
    from dvai_bridge import download_model

    root = tmp_path_factory.mktemp("template")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_ENDPOINT", _server.url)
        mp.setenv("HF_HUB_CACHE", str(root / "hf"))
        mp.setenv("DVAI_BRIDGE_CACHE", str(root / "dvai"))
        mp.delenv("HF_HUB_OFFLINE", raising=False)
        download_model(MLX_REPO)
        download_model(f"{GGUF_REPO}/{GGUF_NAME}")
    return root / "hf"


@pytest.fixture
def seeded(hub: FakeHub, _template_cache: Path) -> FakeHub:
    """``hub``, with the MLX repo and the GGUF file already in the HF cache (hard links to
    one downloaded copy: no test pays for the bytes twice)."""
    shutil.copytree(
        _template_cache, os.environ["HF_HUB_CACHE"], symlinks=True, copy_function=os.link
    )
    hub.requests.clear()
    return hub


def assert_monotonic(events: list, total: int | None = None) -> None:
    downloads = [e for e in events if e.phase == "download"]
    assert downloads, "no download events"
    received = [e.bytes_received for e in downloads]
    assert received == sorted(received), received
    percents = [e.percent for e in downloads]
    assert percents == sorted(percents), percents
    last = downloads[-1]
    assert last.bytes_received == last.bytes_total
    assert last.percent == 100.0
    if total is not None:
        assert {e.bytes_total for e in downloads} == {total}
