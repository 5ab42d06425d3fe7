"""``dvai-bridge pull``, ``models ls``, ``models rm`` as a user runs them."""

from __future__ import annotations

import json

from click.testing import CliRunner

from dvai_bridge.cli import main

from .conftest import GGUF_NAME, GGUF_REPO, MLX_REPO


def run(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def test_pull_shows_a_byte_progress_bar_and_prints_the_path(hub):
    result = run("pull", f"{GGUF_REPO}/{GGUF_NAME}")
    assert result.exit_code == 0, result.output
    assert result.stdout.strip().endswith(f"/{GGUF_NAME}")
    assert f"{GGUF_REPO}/{GGUF_NAME}" in result.stderr  # the bar's label
    assert "3.1/3.1 MB" in result.stderr  # bytes received / total


def test_pull_of_a_missing_repo_fails_with_the_reason(hub):
    result = run("pull", "mlx-community/does-not-exist")
    assert result.exit_code == 1
    assert "error: mlx-community/does-not-exist: no such model repo" in result.stderr


def test_models_ls_and_rm(seeded):
    table = run("models", "ls")
    assert table.exit_code == 0
    assert MLX_REPO in table.stdout and f"{GGUF_REPO}/{GGUF_NAME}" in table.stdout
    assert "100.0 MB" in table.stdout and "2 model(s)" in table.stdout

    listed = json.loads(run("models", "ls", "--json").stdout)
    assert {m["ref"]: (m["kind"], m["backend"]) for m in listed} == {
        MLX_REPO: ("mlx", "mlx"),
        f"{GGUF_REPO}/{GGUF_NAME}": ("gguf", "llama"),
    }

    dry = run("models", "rm", MLX_REPO, "--dry-run")
    assert dry.exit_code == 0
    assert dry.stdout.startswith(f"Would delete {MLX_REPO}: 100.0 MB freed.")
    assert len(json.loads(run("models", "ls", "--json").stdout)) == 2

    gone = run("models", "rm", MLX_REPO)
    assert gone.stdout.strip() == f"Deleted {MLX_REPO}: 100.0 MB freed."
    assert [m["ref"] for m in json.loads(run("models", "ls", "--json").stdout)] == [
        f"{GGUF_REPO}/{GGUF_NAME}"
    ]

    again = run("models", "rm", MLX_REPO)
    assert again.exit_code == 1 and "is not cached" in again.stderr


def test_models_ls_with_nothing_cached(hub):
    assert run("models", "ls").stdout.strip() == "No cached models."
    assert json.loads(run("models", "ls", "--json").stdout) == []
