"""The backend probe: a child process's crash is an answer, cached per build, model and CPU;
and ``auto`` does not pick a llama build that fails it."""

from __future__ import annotations

import importlib.util
import logging
import sys

import pytest

from dvai_bridge.backends import probe as probe_mod
from dvai_bridge.backends import registry
from dvai_bridge.backends.probe import ProbeResult, _run_child, probe
from dvai_bridge.config import StartConfig


def test_a_child_that_segfaults_is_reported_by_its_signal():
    crash = [sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGSEGV)"]
    result = _run_child("llama", crash)
    assert not result.ok and "SIGSEGV" in result.detail


def test_a_child_that_fails_is_reported_with_its_last_words():
    fail = [sys.executable, "-c", "raise SystemExit('no kernels for this CPU')"]
    result = _run_child("llama", fail)
    assert not result.ok and "exit code 1" in result.detail
    assert "no kernels for this CPU" in result.detail


def test_results_are_cached_until_the_build_or_model_changes(tmp_path, monkeypatch):
    monkeypatch.setenv("DVAI_BRIDGE_CACHE", str(tmp_path))
    calls = []

    def fake_child(backend, cmd):
        calls.append(cmd)
        return ProbeResult(backend, True, "decoded")

    monkeypatch.setattr(probe_mod, "_run_child", fake_child)
    monkeypatch.setattr(probe_mod, "installed", lambda backend: True)
    monkeypatch.setattr(probe_mod, "_build_identity", lambda backend: "build 1")
    model = tmp_path / "m.gguf"
    model.write_bytes(b"x")
    assert probe("llama", model).ok and probe("llama", model).ok
    assert len(calls) == 1  # the second answer came from the cache
    model.write_bytes(b"xy")  # another model file: probed again
    probe("llama", model)
    assert len(calls) == 2
    monkeypatch.setattr(probe_mod, "_build_identity", lambda backend: "build 2")
    probe("llama", model)  # another build: probed again
    assert len(calls) == 3
    probe("llama", model, use_cache=False)
    assert len(calls) == 4


@pytest.mark.llama
def test_the_installed_llama_build_decodes_here():
    if importlib.util.find_spec("llama_cpp") is None:
        pytest.skip("llama-cpp-python is not installed (scripts/setup.sh --dev builds it)")
    result = probe("llama", use_cache=False)
    assert result.ok, result.detail
    assert "decoded" in result.detail


def test_auto_serves_through_mlx_when_llama_fails_its_probe(monkeypatch, caplog):
    monkeypatch.setattr(registry, "_choose_for_gguf", lambda: ("llama", "MLX would run on the CPU"))
    monkeypatch.setattr(probe_mod, "installed", lambda backend: True)
    monkeypatch.setattr(
        probe_mod,
        "probe",
        lambda backend, model: ProbeResult(
            backend, False, "the process died with SIGSEGV while decoding a test prompt"
        ),
    )
    with caplog.at_level(logging.WARNING):
        assert registry.resolve_name(StartConfig()) == "mlx"
    assert "SIGSEGV" in caplog.text
    monkeypatch.setattr(
        probe_mod, "probe", lambda backend, model: ProbeResult(backend, True, "decoded")
    )
    assert registry.resolve_name(StartConfig()) == "llama"
