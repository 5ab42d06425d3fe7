"""Hugging Face downloads against the fake Hub: progress, resume, cache hits, failures."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from dvai_bridge import ChecksumMismatch, DownloadFailed, download_model
from dvai_bridge.store import hub as store_hub
from dvai_bridge.store.resolve import MLX_PATTERNS

from .conftest import GGUF_NAME, GGUF_REPO, MLX_REPO, assert_monotonic
from .fakehub import Cut, FakeHub


def _total(hub: FakeHub) -> int:
    return sum(f.size for f in hub.repos[MLX_REPO].files.values())


def _same_files(folder: Path, hub: FakeHub) -> None:
    served = hub.repos[MLX_REPO].files
    assert sorted(p.name for p in folder.iterdir()) == sorted(served)
    for name, f in served.items():
        assert (folder / name).stat().st_size == f.size


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_first_download_reports_monotonic_bytes_across_all_files(hub):
    events = []
    folder = download_model(MLX_REPO, progress=events.append)
    _same_files(folder, hub)
    assert_monotonic(events, _total(hub))
    assert len([e for e in events if e.phase == "download"]) >= 3
    # the standard HF cache layout: what `hf cache ls` and mlx-lm read
    hf = Path(os.environ["HF_HUB_CACHE"]) / "models--mlx-community--SmolLM2-135M-Instruct"
    assert (hf / "refs" / "main").read_text() == folder.name
    assert (folder / "model.safetensors").is_symlink()
    assert not list(hf.glob("blobs/*.incomplete"))


def test_a_cached_model_starts_with_no_network(seeded):
    events = []
    folder = download_model(MLX_REPO, progress=events.append)
    _same_files(folder, seeded)
    assert seeded.requests == []
    assert events == []


def test_pull_asks_the_hub_and_finds_nothing_to_fetch(seeded):
    events = []
    folder = download_model(MLX_REPO, progress=events.append, refresh=True)
    _same_files(folder, seeded)
    assert [
        path for method, path, _ in seeded.requests if method == "GET" and "/resolve/" in path
    ] == []
    assert_monotonic(events)


def test_offline_uses_the_cache_and_refuses_what_is_not_there(seeded, monkeypatch):
    hub = seeded
    folder = download_model(MLX_REPO)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert download_model(MLX_REPO, refresh=True) == folder  # refresh cannot go online
    with pytest.raises(DownloadFailed, match="HF_HUB_OFFLINE") as info:
        download_model("mlx-community/not-cached")
    assert info.value.code == "offline"
    assert hub.requests == []


def test_an_unreachable_hub_falls_back_to_the_cache(seeded, monkeypatch):
    folder = download_model(MLX_REPO)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    assert download_model(MLX_REPO, refresh=True) == folder
    with pytest.raises(DownloadFailed, match="Cannot reach the Hub") as info:
        download_model("mlx-community/not-cached")
    assert info.value.code == "network_unreachable"


def test_a_missing_repo_is_a_clear_download_failure(hub):
    with pytest.raises(DownloadFailed, match="no such model repo") as info:
        download_model("mlx-community/does-not-exist")
    assert info.value.code == "repo_not_found"
    assert info.value.status_code == 502


@pytest.mark.parametrize(
    "status, code, words",
    [
        (403, "gated_repo", "gated repo"),
        (401, "repo_not_found", "hf auth login"),
    ],
)
def test_a_gated_repo_is_a_clear_download_failure(hub, status, code, words):
    hub.gated[MLX_REPO] = status
    with pytest.raises(DownloadFailed, match=words) as info:
        download_model(MLX_REPO)
    assert info.value.code == code


def test_a_gguf_repo_named_as_an_mlx_model_says_which_file_to_name(hub):
    with pytest.raises(DownloadFailed, match=f"{GGUF_REPO}/{GGUF_NAME}"):
        download_model(GGUF_REPO)


def test_a_cut_connection_resumes_with_a_range_request(hub):
    size = hub.repos[MLX_REPO].files["model.safetensors"].size
    hub.cut["model.safetensors"] = Cut(after=size // 3)
    events = []
    folder = download_model(MLX_REPO, progress=events.append)
    _same_files(folder, hub)
    assert hub.gets("/model.safetensors") == [None, f"bytes={size // 3}-"]
    assert_monotonic(events, _total(hub))
    assert (
        _sha256(folder / "model.safetensors")
        == hub.repos[MLX_REPO].files["model.safetensors"].sha256
    )


def test_an_interrupted_download_resumes_on_the_next_attempt(hub):
    from dvai_bridge import list_cached_models

    file = hub.repos[MLX_REPO].files["model.safetensors"]
    cut = file.size // 2
    hub.cut["model.safetensors"] = Cut(after=cut)
    hub.fail_after_cut = True  # the network stays down: every retry fails
    with pytest.raises(DownloadFailed, match="resume"):
        download_model(MLX_REPO)
    repo_dir = Path(os.environ["HF_HUB_CACHE"]) / "models--mlx-community--SmolLM2-135M-Instruct"
    partial = repo_dir / "blobs" / f"{file.sha256}.incomplete"
    assert partial.stat().st_size == cut  # kept, and not looking complete
    assert not (repo_dir / "blobs" / file.sha256).exists()
    assert not (repo_dir / "refs" / "main").exists()
    listed = list_cached_models()
    assert [(m.ref, m.complete) for m in listed] == [(MLX_REPO, False)]
    assert listed[0].bytes >= cut

    hub.heal()
    hub.requests.clear()
    events = []
    folder = download_model(MLX_REPO, progress=events.append)
    assert hub.gets("/model.safetensors") == [f"bytes={cut}-"]
    assert_monotonic(events, _total(hub))
    assert events[0].bytes_received >= cut  # the kept bytes count from the start
    assert _sha256(folder / "model.safetensors") == file.sha256
    assert not partial.exists()


def test_files_huggingface_hub_downloads_itself_report_progress_too(hub):
    """The path Xet-stored files take: hf_hub_download with our tqdm stand-in."""
    events = []
    from dvai_bridge.progress import ProgressHub

    progress = ProgressHub()
    progress.add_listener(events.append)
    folder = store_hub.download_snapshot(
        MLX_REPO, None, MLX_PATTERNS, progress=progress, use_hf_download=lambda f: True
    )
    _same_files(folder, hub)
    assert_monotonic(events, _total(hub))
    assert len(events) >= 3


def test_one_gguf_file_of_a_repo_with_its_sha256(hub, tiny_gguf):
    sha = _sha256(tiny_gguf)
    path = download_model(f"{GGUF_REPO}/{GGUF_NAME}", sha256=sha)
    assert path.name == GGUF_NAME and _sha256(path) == sha
    hub.requests.clear()
    assert download_model(f"hf://{GGUF_REPO}/{GGUF_NAME}", sha256=sha) == path
    assert hub.requests == []
    with pytest.raises(ChecksumMismatch):
        download_model(f"{GGUF_REPO}/{GGUF_NAME}", sha256="0" * 64)
