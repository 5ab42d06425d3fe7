"""The model reference grammar: one parser, every kind of reference."""

from __future__ import annotations

import pytest

from dvai_bridge import ConfigurationInvalid
from dvai_bridge.store.refs import is_remote_reference, parse_reference

SHA = "ab" * 32


@pytest.mark.parametrize(
    "text, kind, canonical",
    [
        (
            "mlx-community/Llama-3.2-1B-Instruct-4bit",
            "hf-repo",
            "mlx-community/Llama-3.2-1B-Instruct-4bit",
        ),
        ("org/name@v1.0", "hf-repo", "org/name@v1.0"),
        ("org/name@refs/pr/3", "hf-repo", "org/name@refs/pr/3"),
        ("org/name/q4.gguf", "hf-file", "org/name/q4.gguf"),
        ("org/name@main/sub/q4.gguf", "hf-file", "org/name@main/sub/q4.gguf"),
        ("hf://org/name", "hf-repo", "org/name"),
        ("hf://org/name@v2/q4.gguf", "hf-file", "org/name@v2/q4.gguf"),
        (
            "https://huggingface.co/org/name/resolve/main/q4.gguf",
            "hf-file",
            "org/name@main/q4.gguf",
        ),
        ("https://huggingface.co/org/name/blob/main/q4.gguf", "hf-file", "org/name@main/q4.gguf"),
        (
            "https://example.com/models/x.gguf?download=1",
            "url",
            "https://example.com/models/x.gguf?download=1",
        ),
    ],
)
def test_remote_references(text, kind, canonical):
    ref = parse_reference(text)
    assert (ref.kind, ref.canonical) == (kind, canonical)
    assert ref.remote and is_remote_reference(text)
    assert ref.format == ("mlx" if kind == "hf-repo" else "gguf")


def test_local_paths_win_over_repo_ids(tmp_path, monkeypatch):
    (tmp_path / "org" / "name").mkdir(parents=True)
    (tmp_path / "m.gguf").write_bytes(b"GGUF")
    monkeypatch.chdir(tmp_path)
    assert parse_reference("org/name").kind == "local-dir"
    assert parse_reference("m.gguf").kind == "local-gguf"
    assert not is_remote_reference("m.gguf")


def test_a_sha256_comes_with_the_url_or_beside_it():
    assert parse_reference(f"https://x.org/a.gguf#sha256={SHA}").sha256 == SHA
    assert parse_reference("https://x.org/a.gguf", sha256=SHA.upper()).sha256 == SHA
    assert parse_reference("org/name/a.gguf", sha256=SHA).sha256 == SHA
    with pytest.raises(ConfigurationInvalid, match="64 hex digits"):
        parse_reference("https://x.org/a.gguf", sha256="abc")
    with pytest.raises(ConfigurationInvalid, match="Two different"):
        parse_reference(f"https://x.org/a.gguf#sha256={SHA}", sha256="cd" * 32)
    with pytest.raises(ConfigurationInvalid, match=r"single \.gguf"):
        parse_reference("org/name", sha256=SHA)


@pytest.mark.parametrize(
    "text, words",
    [
        ("", "Empty model reference"),
        ("./missing.gguf", "not found"),
        ("models/missing.gguf", "not found"),
        ("org/name/config.json", "must be a .gguf"),
        ("https://example.com/model.bin", "does not point to a .gguf"),
        ("hf://datasets/org/name", "dataset repo"),
    ],
)
def test_bad_references_name_the_grammar(text, words):
    with pytest.raises(ConfigurationInvalid, match=words) as info:
        parse_reference(text)
    assert info.value.param in ("model_path", "sha256")
    assert not is_remote_reference(text)
