"""GGUF files from plain URLs: sha256, resume with Range, failures."""

from __future__ import annotations

import hashlib
import json

import pytest

from dvai_bridge import ChecksumMismatch, DownloadFailed, download_model
from dvai_bridge.store import gguf

from .conftest import GGUF_NAME, GGUF_SIZE, assert_monotonic
from .fakehub import Cut


@pytest.fixture
def url(hub) -> str:
    return f"{hub.url}/files/{GGUF_NAME}"


@pytest.fixture
def sha(tiny_gguf) -> str:
    return hashlib.sha256(tiny_gguf.read_bytes()).hexdigest()


def test_a_url_download_checks_its_sha256_and_is_cached(hub, url, sha):
    events = []
    path = download_model(url, sha256=sha, progress=events.append)
    assert path.name == GGUF_NAME and path.stat().st_size == GGUF_SIZE
    assert_monotonic(events, GGUF_SIZE)
    assert events[-1].phase == "verify"
    source = json.loads((path.parent / "source.json").read_text())
    assert source["url"] == url and source["sha256"] == sha and source["size"] == GGUF_SIZE
    hub.requests.clear()
    assert download_model(f"{url}#sha256={sha}") == path  # the sha256 in the URL, too
    assert hub.requests == []


def test_a_sha256_mismatch_deletes_the_file(hub, url):
    with pytest.raises(ChecksumMismatch, match="expected " + "0" * 64) as info:
        download_model(url, sha256="0" * 64)
    assert info.value.code == "checksum_mismatch"
    folder = gguf.url_folder(url)
    assert not folder.exists() or not any(
        p.suffix in (".gguf", ".incomplete") for p in folder.iterdir()
    )


def test_a_cached_file_that_does_not_match_a_new_sha256_is_fetched_again(hub, url, sha):
    path = download_model(url)
    path.write_bytes(b"GGUF" + b"\0" * (GGUF_SIZE - 4))  # same size, other bytes
    (path.parent / "source.json").write_text(json.dumps({"url": url}))
    hub.requests.clear()
    assert download_model(url, sha256=sha) == path
    assert hashlib.sha256(path.read_bytes()).hexdigest() == sha
    assert hub.gets(f"/files/{GGUF_NAME}") == [None]


def test_an_interrupted_url_download_resumes_with_a_range_request(hub, url, sha):
    hub.cut[GGUF_NAME] = Cut(after=GGUF_SIZE // 3)
    hub.fail_after_cut = True
    with pytest.raises(DownloadFailed, match="resumes from there"):
        download_model(url, sha256=sha)
    partial = gguf.cached_path(url).with_name(GGUF_NAME + ".incomplete")
    assert partial.stat().st_size == GGUF_SIZE // 3
    assert not gguf.cached_path(url).exists()

    hub.heal()
    hub.requests.clear()
    path = download_model(url, sha256=sha)  # the sha256 covers the kept bytes too
    assert hub.gets(f"/files/{GGUF_NAME}") == [f"bytes={GGUF_SIZE // 3}-"]
    assert hashlib.sha256(path.read_bytes()).hexdigest() == sha


def test_a_missing_url_is_a_clear_download_failure(hub):
    with pytest.raises(DownloadFailed, match="HTTP 404") as info:
        download_model(f"{hub.url}/files/nothing-here.gguf")
    assert info.value.code == "file_not_found"


def test_offline_a_url_not_cached_fails_without_the_network(hub, url, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DownloadFailed, match="HF_HUB_OFFLINE") as info:
        download_model(url)
    assert info.value.code == "offline"
    assert hub.requests == []
