"""A full disk during ``pull``: checked against the sizes before the first byte, a disk that
fills up anyway answered as ``DownloadFailed`` (``disk_full``) with the partial file deleted,
and never a traceback from the CLI.

The real thing runs ``dvai-bridge pull`` on a 2 MiB tmpfs mounted in a private mount namespace
(``unshare -rm``; skipped where user namespaces are not allowed). The same paths run
everywhere with the free space patched (``shutil.disk_usage``) or ENOSPC raised by the
``.incomplete`` file's writes.
"""

from __future__ import annotations

import errno
import json
import shutil
import subprocess
import sys
from collections import namedtuple
from pathlib import Path

import pytest
from click.testing import CliRunner

from dvai_bridge import DownloadFailed, download_model
from dvai_bridge.cli import main
from dvai_bridge.store import fetch as fetch_mod

from .conftest import GGUF_NAME, GGUF_REPO, GGUF_SIZE

HF_FILE = f"{GGUF_REPO}/{GGUF_NAME}"

# Runs inside the namespace, on the tmpfs: pull, then report what is left on the disk.
PROBE = r"""
import json, os, shutil, subprocess, sys
disk, ref = sys.argv[1], sys.argv[2]
env = dict(os.environ, HF_HUB_CACHE=f"{disk}/hf", DVAI_BRIDGE_CACHE=f"{disk}/dvai")
run = subprocess.run([sys.executable, "-m", "dvai_bridge", "pull", ref], capture_output=True,
                     text=True, env=env, timeout=120)
files = {os.path.relpath(os.path.join(top, n), disk): os.path.getsize(os.path.join(top, n))
         for top, _, names in os.walk(disk) for n in names}
usage = shutil.disk_usage(disk)
print(json.dumps({"rc": run.returncode, "stdout": run.stdout, "stderr": run.stderr,
                  "files": files, "free": usage.free, "total": usage.total}))
"""


def _pull_on_tmpfs(tmp_path: Path, ref: str, size: str = "2m") -> dict:
    disk = tmp_path / "disk"
    disk.mkdir()
    script = 'mount -t tmpfs -o size="$1" tmpfs "$2" && shift 2 && exec "$@"'
    done = subprocess.run(
        [
            "unshare",
            "-rm",
            "sh",
            "-c",
            script,
            "sh",
            size,
            str(disk),
            sys.executable,
            "-c",
            PROBE,
            str(disk),
            ref,
        ],
        check=False,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.fixture(scope="session")
def tmpfs_allowed(tmp_path_factory) -> None:
    probe = tmp_path_factory.mktemp("mnt")
    if (
        shutil.which("unshare") is None
        or subprocess.run(
            ["unshare", "-rm", "mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(probe)],
            check=False,
            capture_output=True,
        ).returncode
        != 0
    ):
        pytest.skip("cannot mount a tmpfs in a user namespace here")


def _last(stderr: str) -> str:
    """The last line (the download bar may have drawn a line before it)."""
    return stderr.strip().splitlines()[-1]


def _assert_no_traceback(stderr: str) -> None:
    assert "Traceback" not in stderr and "OSError" not in stderr, stderr


@pytest.mark.parametrize("ref", ["hf", "url"])
def test_pull_refuses_what_does_not_fit_before_writing(hub, tmp_path, tmpfs_allowed, ref):
    url = f"{hub.url}/files/{GGUF_NAME}"
    result = _pull_on_tmpfs(tmp_path, HF_FILE if ref == "hf" else url)
    stderr = result["stderr"]
    assert result["rc"] == 1, result
    _assert_no_traceback(stderr)
    where = "hf" if ref == "hf" else "dvai/gguf/"
    assert stderr.startswith("error: Not enough disk space for "), stderr
    assert f"it needs 3.1 MB more and {tmp_path / 'disk' / where}" in stderr, stderr
    assert "has 2.1 MB free" in stderr, stderr
    assert not [f for f, n in result["files"].items() if n > 4096], result["files"]
    assert result["free"] >= result["total"] - 4096, result  # a URL's source.json at most
    if ref == "hf":  # the Hub lists sizes: not a byte is asked for (a URL's GET tells it)
        assert not hub.gets(GGUF_NAME)


def test_a_disk_that_fills_up_mid_download_is_left_as_it_was(hub, tmp_path, tmpfs_allowed):
    hub.no_length.add(GGUF_NAME)  # no Content-Length: nothing to check before writing
    result = _pull_on_tmpfs(tmp_path, f"{hub.url}/files/{GGUF_NAME}")
    stderr = result["stderr"]
    assert result["rc"] == 1, result
    _assert_no_traceback(stderr)
    assert _last(stderr).startswith(
        "error: The disk filled up while downloading tiny-q4.gguf: 2.1 MB had been written under "
    ), stderr
    assert "The partial file was deleted" in stderr
    assert not [f for f in result["files"] if f.endswith(".incomplete")], result["files"]
    assert result["free"] >= result["total"] - 8192, result  # the disk is not left full


def test_a_pull_that_fits_succeeds_on_the_same_small_disk(hub, tmp_path, tmpfs_allowed):
    result = _pull_on_tmpfs(tmp_path, f"{hub.url}/files/{GGUF_NAME}", size="4m")
    assert result["rc"] == 0, result
    assert [n for f, n in result["files"].items() if f.endswith(GGUF_NAME)] == [GGUF_SIZE]


# -- the same paths without a file system of our own ------------------------------------
Usage = namedtuple("Usage", "total used free")


def test_too_little_free_space_is_refused_before_the_first_byte(hub, monkeypatch):
    monkeypatch.setattr(shutil, "disk_usage", lambda path: Usage(10**9, 0, 1_000_000))
    with pytest.raises(DownloadFailed) as info:
        download_model(HF_FILE)
    assert info.value.code == "disk_full" and info.value.param == "model"
    assert "it needs 3.1 MB more" in info.value.message
    assert "has 1.0 MB free" in info.value.message
    assert not hub.gets(GGUF_NAME)
    result = CliRunner().invoke(main, ["pull", HF_FILE], catch_exceptions=False)
    assert result.exit_code == 1
    assert result.stderr.startswith("error: Not enough disk space for "), result.stderr


class _FillsUp:
    """The ``.incomplete`` file on a disk with ``room`` bytes left: ENOSPC past them."""

    def __init__(self, f, room: int) -> None:
        self.f, self.room = f, room

    def write(self, data: bytes) -> int:
        if len(data) > self.room:
            self.f.write(data[: self.room])
            self.room = 0
            raise OSError(errno.ENOSPC, "No space left on device", self.f.name)
        self.room -= len(data)
        return self.f.write(data)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.f.close()


@pytest.mark.parametrize("ref", ["hf", "url"])
def test_enospc_mid_write_deletes_the_partial_file(hub, monkeypatch, ref):
    opened: list[Path] = []

    def open_partial(part: Path, mode: str):
        opened.append(part)
        return _FillsUp(part.open(mode), 1 << 20)

    monkeypatch.setattr(fetch_mod, "_open_partial", open_partial)
    target = HF_FILE if ref == "hf" else f"{hub.url}/files/{GGUF_NAME}"
    result = CliRunner().invoke(main, ["pull", target], catch_exceptions=False)
    assert result.exit_code == 1
    assert "Traceback" not in result.output
    assert _last(result.stderr).startswith("error: The disk filled up while downloading "), (
        result.stderr
    )
    assert "1.0 MB of 3.1 MB had been written" in result.stderr
    assert len(opened) == 1 and not opened[0].exists()  # not retried, nothing left


def test_other_file_system_errors_are_a_download_failed_too(hub, monkeypatch):
    def read_only(part: Path, mode: str):
        raise OSError(errno.EROFS, "Read-only file system", str(part))

    monkeypatch.setattr(fetch_mod, "_open_partial", read_only)
    with pytest.raises(DownloadFailed, match="Read-only file system"):
        download_model(f"{hub.url}/files/{GGUF_NAME}")
