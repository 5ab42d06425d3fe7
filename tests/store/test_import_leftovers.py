"""An MLX import killed midway (SIGKILL, a real child process) leaves its hidden temp folder:
``models ls`` shows it as an incomplete import with its size, ``models prune`` deletes it, and
the next import cleans it up; while the import still runs, both leave it alone."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from dvai_bridge.cli import main
from dvai_bridge.store.locations import mlx_imports_dir
from dvai_bridge.store.resolve import embedded_default_gguf

pytest.importorskip("mlx_lm")

# The import runs until its weights are on disk, says so, and waits to be killed.
CHILD = r"""
import sys, time
import mlx.core as mx
save = mx.save_safetensors
def save_then_wait(*args, **kwargs):
    save(*args, **kwargs)
    print("weights written", flush=True)
    time.sleep(600)  # holds the import half-done until the test kills it
mx.save_safetensors = save_then_wait
from dvai_bridge.backends.mlx.gguf_import import cached_import
cached_import(sys.argv[1])
"""


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("DVAI_BRIDGE_CACHE", str(tmp_path / "dvai"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    return mlx_imports_dir()


def _import_until_written(gguf: Path) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(gguf)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ),
    )
    line = proc.stdout.readline()
    if line.strip() != "weights written":
        proc.kill()
        pytest.fail(f"the import did not reach its weights: {line}{proc.stderr.read()}")
    return proc


def _kill(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    proc.stdout.close()
    proc.stderr.close()


def _cli(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def _imports() -> list[dict]:
    return [
        m for m in json.loads(_cli("models", "ls", "--json").stdout) if m["cache"] == "mlx-imports"
    ]


def test_a_killed_import_is_listed_and_pruned_a_running_one_is_kept(cache):
    gguf = embedded_default_gguf()
    proc = _import_until_written(gguf)
    try:
        (temp,) = [p for p in cache.iterdir() if p.is_dir()]
        assert temp.name.startswith(".") and ".tmp-" in temp.name
        weights = (temp / "model.safetensors").stat().st_size
        assert weights > 90_000_000
        (running,) = _imports()
        assert (running["path"], running["complete"], running["in_use"]) == (str(temp), False, True)
        assert running["bytes"] >= weights
        assert "(incomplete import, in progress)" in _cli("models", "ls").stdout
        assert _cli("models", "prune").stdout.strip() == (
            "No stale, damaged or unfinished MLX imports."
        )
        rm = CliRunner().invoke(main, ["models", "rm", str(temp)])
        assert rm.exit_code == 1 and "in progress" in rm.stderr
        assert temp.is_dir()
    finally:
        _kill(proc)

    (left,) = _imports()
    assert (left["path"], left["complete"], left["in_use"]) == (str(temp), False, False)
    assert left["bytes"] >= weights and "did not finish" in left["stale"]
    table = _cli("models", "ls").stdout
    assert f"{temp} (incomplete import)" in table
    assert "1 unfinished MLX import(s) (98." in table
    dry = _cli("models", "prune", "--dry-run").stdout
    assert dry.startswith("Would delete 1 MLX import(s): 98.") and str(temp) in dry
    assert temp.is_dir()
    assert _cli("models", "prune").stdout.startswith("Deleted 1 MLX import(s): 98.")
    assert list(cache.iterdir()) == []  # the folder and its lock file


def test_the_next_import_deletes_what_a_killed_one_left(cache):
    from dvai_bridge.backends.mlx.gguf_import import cached_import

    gguf = embedded_default_gguf()
    _kill(_import_until_written(gguf))
    (temp,) = [p for p in cache.iterdir() if p.is_dir()]
    folder = cached_import(gguf)
    assert [p.name for p in cache.iterdir()] == [folder.name]
    assert not temp.exists()
    (done,) = _imports()
    assert (done["path"], done["complete"], done["damaged"], done["stale"]) == (
        str(folder),
        True,
        None,
        None,
    )
