"""MLX imports of GGUF files in ``models ls/rm/prune``: listed, stale ones found and pruned,
deleted with their GGUF, and kept while a bridge serves them.

The folders are written here in the importer's layout (``config.json`` + ``dvai_import.json``
with the source's path, size, mtime, importer version and the record of each file);
tests/backends/mlx/gguf_import/test_import.py runs the same store functions over a real import, and
test_import_leftovers.py over the temp folder of a real import killed midway.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from dvai_bridge import ModelInUse, delete_cached_model, download_model, list_cached_models
from dvai_bridge.cli import main
from dvai_bridge.store import imports as store_imports
from dvai_bridge.store import prune_stale_imports
from dvai_bridge.store.inuse import take_lease
from dvai_bridge.store.locations import mlx_imports_dir

from .conftest import GGUF_NAME, GGUF_REPO


def fake_import(source: Path, name: str, version: int = 1, size: int = 1000) -> Path:
    folder = mlx_imports_dir() / name
    folder.mkdir(parents=True)
    stat = source.stat()
    (folder / "config.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(os.urandom(size))
    (folder / "dvai_import.json").write_text(
        json.dumps(
            {
                "source": str(source),
                "size": stat.st_size,
                "mtime_ns": stat.st_mtime_ns,
                "importer_version": version,
                "files": store_imports.record_files(folder),
            }
        )
    )
    return folder


@pytest.fixture
def gguf(seeded) -> Path:
    return download_model(f"{GGUF_REPO}/{GGUF_NAME}")


def imports() -> dict[Path, str]:
    return {m.path: m.stale for m in list_cached_models() if m.cache == "mlx-imports"}


def test_stale_imports_are_listed_and_pruned(gguf, tmp_path):
    gone = tmp_path / "deleted.gguf"
    gone.write_bytes(b"GGUF")
    current = fake_import(gguf, "tiny-new", version=2)
    superseded = fake_import(gguf, "tiny-old", version=1)
    orphan = fake_import(gone, "deleted")
    gone.unlink()
    found = imports()
    assert found[current] == ""
    assert "newer importer" not in found[current]
    assert "importer version 2" in found[superseded]
    assert "is gone" in found[orphan]
    listed = {m.path: m for m in list_cached_models()}
    assert (listed[current].kind, listed[current].backend, listed[current].source) == (
        "mlx",
        "mlx",
        gguf,
    )
    assert listed[current].bytes >= 1000

    dry = prune_stale_imports(dry_run=True)
    assert sorted(m.path for m in dry.models) == sorted([superseded, orphan])
    assert not dry.executed and superseded.exists()
    done = prune_stale_imports()
    assert done.executed and done.bytes_freed == dry.bytes_freed >= 2000
    assert list(imports()) == [current]


def test_deleting_a_gguf_deletes_its_imports_and_an_import_folder_deletes_alone(gguf):
    first = fake_import(gguf, "tiny-a")
    plan = delete_cached_model(f"{GGUF_REPO}/{GGUF_NAME}", dry_run=True)
    assert first in plan.paths and plan.bytes_freed >= 1000 + gguf.stat().st_size
    delete_cached_model(str(first))  # the folder's path names the import
    assert not first.exists() and gguf.exists()

    second = fake_import(gguf, "tiny-b")
    delete_cached_model(f"{GGUF_REPO}/{GGUF_NAME}")
    assert not second.exists() and imports() == {}


def test_an_import_whose_gguf_a_bridge_serves_is_kept(gguf):
    folder = fake_import(gguf, "tiny-served")
    os.utime(gguf, ns=(1, 1))  # stale by its record ...
    lease = take_lease(str(gguf), "http://127.0.0.1:38999/v1")  # a bridge serving the GGUF
    try:
        assert list_cached_models()[-1].in_use
        assert prune_stale_imports().models == ()  # ... but in use
        with pytest.raises(ModelInUse):
            delete_cached_model(str(folder))
    finally:
        lease.release()
    assert [m.path for m in prune_stale_imports().models] == [folder]


def test_the_cli_lists_and_prunes_imports(gguf, tmp_path):
    gone = tmp_path / "x.gguf"
    gone.write_bytes(b"GGUF")
    orphan = fake_import(gone, "x-import", size=2_000_000)
    gone.unlink()
    runner = CliRunner()
    table = runner.invoke(main, ["models", "ls"]).stdout
    assert "stale import" in table and str(orphan) in table
    assert "1 stale MLX import(s) (2.0 MB): `dvai-bridge models prune` deletes them." in table
    dry = runner.invoke(main, ["models", "prune", "--dry-run"]).stdout
    assert dry.startswith("Would delete 1 MLX import(s): 2.0 MB freed.") and orphan.exists()
    assert f"{orphan}  (stale: its source {gone} is gone)" in dry
    assert runner.invoke(main, ["models", "prune"]).stdout.startswith("Deleted 1 MLX import(s)")
    assert runner.invoke(main, ["models", "prune"]).stdout.strip() == (
        "No stale, damaged or unfinished MLX imports."
    )
    assert not orphan.exists()


def _truncate(path: Path) -> None:
    with path.open("r+b") as f:
        f.truncate(path.stat().st_size // 2)


def _overwrite(path: Path) -> None:  # same size, other bytes
    path.write_bytes(os.urandom(path.stat().st_size))


@pytest.mark.parametrize("damage", [_truncate, _overwrite])
def test_damaged_imports_are_flagged_and_pruned(gguf, damage):
    intact = fake_import(gguf, "tiny-intact", size=6_000_000)
    broken = fake_import(gguf, "tiny-broken", size=6_000_000)
    damage(broken / "model.safetensors")
    listed = {m.path: m for m in list_cached_models() if m.cache == "mlx-imports"}
    assert listed[intact].damaged == "" and listed[intact].stale == ""
    assert "model.safetensors" in listed[broken].damaged, listed[broken]
    assert listed[broken].stale == ""  # its GGUF is still there: damaged, not stale
    runner = CliRunner()
    table = runner.invoke(main, ["models", "ls"]).stdout
    assert f"{broken} (damaged import)" in table and f"{intact} (" not in table
    assert "1 damaged MLX import(s)" in table
    as_json = json.loads(runner.invoke(main, ["models", "ls", "--json"]).stdout)
    assert [m["damaged"] for m in as_json if m["path"] == str(broken)] == [listed[broken].damaged]
    lease = take_lease(str(broken), "http://127.0.0.1:38999/v1")  # served: kept
    try:
        assert prune_stale_imports().models == ()
    finally:
        lease.release()
    out = runner.invoke(main, ["models", "prune"]).stdout
    assert out.startswith("Deleted 1 MLX import(s)")
    assert f"{broken}  (damaged: {listed[broken].damaged})" in out
    assert not broken.exists() and intact.exists()
