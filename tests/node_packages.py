"""Node and the npm packages a Node test runs: ``npm ci`` once per folder (what its
package-lock.json pins; the registry is reachable in CI), or a skip where node/npm are absent."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest


def node_with(folder: Path, package: str, needed_for: str) -> str:
    """The ``node`` executable, with ``folder``'s packages installed (``npm ci`` when
    ``package`` is not there yet); skips the test where node or npm is missing."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.skip(f"node and npm are needed for {needed_for}")
    if not (folder / "node_modules" / package / "package.json").is_file():
        done = subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund"],
            cwd=folder,
            check=False,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert done.returncode == 0, f"npm ci failed:\n{done.stdout}\n{done.stderr}"
    return node
