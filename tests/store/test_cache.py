"""list_cached_models / delete_cached_model over both caches, and refusing a model in use."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from dvai_bridge import (
    ModelInUse,
    ModelNotFound,
    delete_cached_model,
    download_model,
    list_cached_models,
)
from dvai_bridge.store.inuse import running_servers, take_lease

from .conftest import GGUF_NAME, GGUF_REPO, GGUF_SIZE, MLX_REPO


@pytest.fixture
def three(seeded) -> dict[str, str]:
    """The MLX repo and a repo's GGUF in the HF cache, and a URL's GGUF in ours."""
    url = f"{seeded.url}/files/{GGUF_NAME}"
    download_model(url)
    return {"mlx": MLX_REPO, "hf-gguf": f"{GGUF_REPO}/{GGUF_NAME}", "url": url}


def _mlx_bytes(hub) -> int:
    return sum(f.size for f in hub.repos[MLX_REPO].files.values())


def test_ls_lists_both_caches_and_rm_frees_them(seeded, three):
    from huggingface_hub import scan_cache_dir

    found = {m.ref: m for m in list_cached_models()}
    assert sorted(found) == sorted(three.values())
    mlx, hf_gguf, url = found[three["mlx"]], found[three["hf-gguf"]], found[three["url"]]
    assert (mlx.kind, mlx.backend, mlx.cache, mlx.bytes) == ("mlx", "mlx", "hf", _mlx_bytes(seeded))
    assert (mlx.path / "config.json").is_file() and mlx.revisions == ("main",)
    assert (hf_gguf.kind, hf_gguf.backend, hf_gguf.cache, hf_gguf.bytes) == (
        "gguf",
        "llama",
        "hf",
        GGUF_SIZE,
    )
    assert (url.kind, url.cache, url.bytes) == ("gguf", "gguf", url.bytes)
    assert url.bytes >= GGUF_SIZE and url.path.name == GGUF_NAME
    assert all(m.complete and not m.in_use and m.last_used is not None for m in found.values())

    plan = delete_cached_model(MLX_REPO, dry_run=True)
    assert not plan.executed and plan.bytes_freed == _mlx_bytes(seeded)
    assert [m.ref for m in plan.models] == [MLX_REPO]
    assert mlx.path.exists()  # a dry run deletes nothing

    assert delete_cached_model(MLX_REPO).executed
    assert delete_cached_model(three["url"]).bytes_freed == url.bytes
    assert [m.ref for m in list_cached_models()] == [three["hf-gguf"]]
    assert not mlx.path.exists() and not url.path.exists()
    assert delete_cached_model(three["hf-gguf"]).bytes_freed == GGUF_SIZE
    assert list_cached_models() == []
    assert not scan_cache_dir(os.environ["HF_HUB_CACHE"]).warnings  # a consistent HF cache
    with pytest.raises(ModelNotFound, match="not cached"):
        delete_cached_model(MLX_REPO)


def test_rm_takes_a_revision_or_a_cache_path(seeded):
    folder = download_model(MLX_REPO)
    with pytest.raises(ModelNotFound):
        delete_cached_model(f"{MLX_REPO}@v9")
    assert delete_cached_model(f"{MLX_REPO}@main", dry_run=True).bytes_freed == _mlx_bytes(seeded)
    assert delete_cached_model(str(folder)).executed  # the snapshot folder names it too
    assert [m.ref for m in list_cached_models()] == [f"{GGUF_REPO}/{GGUF_NAME}"]
    with pytest.raises(ModelNotFound, match="not in a model cache"):
        delete_cached_model(str(Path(__file__).parent))


def test_a_model_in_use_is_refused_until_its_bridge_stops(seeded):
    lease = take_lease(MLX_REPO, "http://127.0.0.1:38883/v1")
    try:
        assert [s.ref for s in running_servers()] == [MLX_REPO]
        assert [m.in_use for m in list_cached_models() if m.ref == MLX_REPO] == [True]
        with pytest.raises(ModelInUse, match=r"127\.0\.0\.1:38883.*Stop that bridge") as info:
            delete_cached_model(MLX_REPO, dry_run=True)
        assert info.value.status_code == 409
        with pytest.raises(ModelInUse):
            delete_cached_model(f"{MLX_REPO}@main")
        delete_cached_model(f"{GGUF_REPO}/{GGUF_NAME}")  # another model: fine
    finally:
        lease.release()
    assert running_servers() == []
    assert delete_cached_model(MLX_REPO).executed


def test_a_bridge_in_another_process_protects_its_model_until_it_dies(seeded):
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(f"""
        import sys, time
        from dvai_bridge.store.inuse import take_lease
        lease = take_lease({MLX_REPO!r}, "http://127.0.0.1:40000/v1")
        print("leased", flush=True)
        time.sleep(60)  # holds the lease until the test kills it
        """),
        ],
        stdout=subprocess.PIPE,
        text=True,
        env=dict(os.environ),
    )
    try:
        assert holder.stdout.readline().strip() == "leased"
        with pytest.raises(ModelInUse, match=f"40000.*pid {holder.pid}"):
            delete_cached_model(MLX_REPO)
    finally:
        holder.kill()  # no clean-up: the OS drops its lock, the lease goes stale
        holder.wait()
    assert running_servers() == []
    assert delete_cached_model(MLX_REPO).executed


def test_the_bridge_takes_a_lease_on_the_model_it_serves(seeded):
    from dvai_bridge import Bridge, StartConfig

    bridge = Bridge()
    bridge.start_blocking(StartConfig(backend="fake", model_path=MLX_REPO, http_base_port=0))
    try:
        assert bridge.model_path == download_model(MLX_REPO)
        with pytest.raises(ModelInUse):
            delete_cached_model(MLX_REPO)
    finally:
        bridge.stop()
    assert bridge.model_path is None
    assert delete_cached_model(MLX_REPO).executed
