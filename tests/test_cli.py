"""``dvai-bridge serve`` as a user runs it: prints the base_url, serves, stops on a signal."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import pytest

DVAI_BRIDGE = [sys.executable, "-m", "dvai_bridge"]


@contextmanager
def serving(*options: str) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """``dvai-bridge serve`` on the fake backend with ``options``: the process and the base_url
    its first line printed (the process is killed after, whatever happened)."""
    proc = subprocess.Popen(
        [
            *DVAI_BRIDGE,
            "serve",
            "--backend",
            "fake",
            "--port",
            "0",
            "--log-level",
            "warning",
            *options,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None and proc.stderr is not None
        line = proc.stdout.readline()
        match = re.search(r"at (http://127\.0\.0\.1:\d+/v1)", line)
        assert match, line + proc.stderr.read()
        yield proc, match.group(1)
    finally:
        proc.kill()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_serve_prints_the_base_url_and_stops_cleanly_on_a_signal(sig):
    with serving() as (proc, base):
        r = httpx.post(
            base + "/chat/completions", json={"messages": [{"role": "user", "content": "cli"}]}
        )
        assert r.json()["choices"][0]["message"]["content"] == "echo: cli"
        proc.send_signal(sig)
        assert proc.wait(timeout=15) == 0
        assert "Stopped." in proc.stderr.read()
        with pytest.raises(httpx.ConnectError):
            httpx.get(base.removesuffix("/v1") + "/health")


def test_serve_with_an_unknown_backend_fails_with_a_clear_message():
    proc = subprocess.run(
        [*DVAI_BRIDGE, "serve", "--backend", "nosuch", "--port", "0"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1
    assert "Unknown backend 'nosuch'" in proc.stderr


def test_doctor_shows_the_device_its_engine_defaults_and_each_backends_probe(tmp_path):
    env = {**os.environ, "DVAI_BRIDGE_CACHE": str(tmp_path)}  # no cached probe answers
    out = subprocess.run(
        [*DVAI_BRIDGE, "doctor"],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        check=True,
    ).stdout
    assert re.search(r"^mlx +device (cpu|cuda|metal)", out, re.M), out
    assert re.search(r"^engine +defaults on \w+: batch \d+, prefill chunk \d+", out, re.M), out
    assert re.search(r"^probe +mlx: ok: mlx [\d.]+: device", out, re.M), out
    llama = re.search(r"^probe +llama: (.*)$", out, re.M)
    assert llama, out
    import importlib.util

    if importlib.util.find_spec("llama_cpp") is not None:  # scripts/setup.sh --dev built it
        assert llama.group(1).startswith("ok: llama-cpp-python"), out
        assert "decoded" in llama.group(1)
    else:
        assert llama.group(1) == "not installed"


def test_serve_alias_and_strict_model_names_reach_the_server():
    options = ("--alias", "mine", "--alias", "other", "--strict-model-names")
    with serving(*options) as (proc, base):
        assert [m["id"] for m in httpx.get(base + "/models").json()["data"]] == [
            "fake-model",
            "mine",
            "other",
        ]
        msgs = [{"role": "user", "content": "cli"}]
        r = httpx.post(base + "/chat/completions", json={"model": "other", "messages": msgs})
        assert r.status_code == 200
        r = httpx.post(base + "/chat/completions", json={"model": "gpt-4o", "messages": msgs})
        assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0


# The flags as they were when the CLI was written by hand (public: README, docs/usage.md).
PUBLIC_FLAGS = {
    "--backend", "--model", "--models-file", "--max-loaded-models", "--models-memory-mb",
    "--idle-unload", "--alias", "--strict-model-names", "--host", "--port", "--port-attempts",
    "--context-size", "--threads", "--gpu-layers", "--embedding-mode", "--embedding-model",
    "--api-key", "--api-key-file", "--allowed-host", "--cors-origin", "--max-body-mb",
    "--shutdown-grace", "--max-batch-size", "--prefill-chunk", "--prompt-cache-mb",
    "--max-queued", "--responses-max", "--responses-max-mb", "--responses-ttl",
    "--responses-dir", "--shard", "--group-timeout", "--chat-template", "--reasoning-field",
    "--reasoning-budget-minimal", "--reasoning-budget-low", "--reasoning-budget-medium",
    "--log-level",
}  # fmt: skip


def _serve_fields():
    """Each serve option with the field it is generated from."""
    from dvai_bridge.cli import serve
    from dvai_bridge.cli_options import backend_fields
    from dvai_bridge.config import StartConfig

    fields = {**StartConfig.model_fields, **backend_fields()}
    return [(p, fields[p.name]) for p in serve.params if p.name != "help"]


def test_every_serve_flag_has_its_fields_default_and_help(monkeypatch):
    from dvai_bridge.cli import serve
    from dvai_bridge.cli_options import NOT_FLAGS, backend_fields
    from dvai_bridge.config import StartConfig

    monkeypatch.delenv("DVAI_BRIDGE_API_KEY", raising=False)
    monkeypatch.delenv("DVAI_BRIDGE_API_KEY_FILE", raising=False)
    pairs = _serve_fields()
    flags = {opt for p, _ in pairs for opt in p.opts}
    assert flags >= PUBLIC_FLAGS, PUBLIC_FLAGS - flags
    named = {p.name for p, _ in pairs}
    assert named == (set(StartConfig.model_fields) - NOT_FLAGS) | set(backend_fields())
    unset = serve.make_context("serve", []).params  # what serve gets with no flag given
    for param, field in pairs:
        assert field.description and param.help.startswith(field.description), param.name
        if param.multiple:  # nothing given is the field's empty default
            assert field.get_default(call_default_factory=True) in (None, []), param.name
            assert not unset[param.name], param.name
        else:
            assert unset[param.name] == field.default, param.name


def test_serve_help_shows_each_default():
    from click.testing import CliRunner

    from dvai_bridge.cli import main

    out = " ".join(CliRunner().invoke(main, ["serve", "--help"]).output.split())
    shown = 0
    for param, field in _serve_fields():
        if field.default is not None and not param.is_flag and not param.multiple:
            assert f"[default: {field.default}]" in out, param.name
            shown += 1
    assert (
        shown >= 15
        and "--port INTEGER First port to try (0: any free port). [default: 38883]" in out
    )


def test_serve_passes_only_the_backend_flags_given():
    from dvai_bridge.cli import serve
    from dvai_bridge.cli_options import backend_flags

    ctx = serve.make_context("serve", ["--threads", "2", "--shard", "tensor"])
    options = backend_flags(ctx, dict(ctx.params))
    assert options["backend_options"] == {"threads": 2, "shard": "tensor"}
    assert "gpu_layers" not in options and options["max_body_mb"] == 16
    ctx = serve.make_context("serve", [])
    assert backend_flags(ctx, dict(ctx.params))["backend_options"] == {}


def test_serve_refuses_an_invalid_backend_option_naming_it_and_its_backend():
    proc = subprocess.run(
        [*DVAI_BRIDGE, "serve", "--backend", "fake", "--gpu-layers", "-5"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1
    assert "error: Invalid gpu_layers for the llama backend" in proc.stderr
