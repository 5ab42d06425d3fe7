"""Several models behind one port, on the fake backend: names select, loads on demand happen
once, limits evict the least recently used idle model, idle models unload, a failed load is
that model's state only. The real-model proof is tests/e2e/test_model_set.py."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from dvai_bridge import StartConfig
from dvai_bridge.backends.fake import FakeBackend
from dvai_bridge.bridge import Bridge
from dvai_bridge.engine.model_set import ModelEntry, ModelSet
from dvai_bridge.engine.scheduler import Scheduler
from dvai_bridge.errors import ConfigurationInvalid, ModelLoadFailed
from dvai_bridge.model_specs import serving_models, split_entry
from tests.waiting import wait_until


def _chat(model: str | None, content: str = "hi", **extra) -> dict:
    body = {"messages": [{"role": "user", "content": content}], "max_tokens": 4, **extra}
    if model is not None:
        body["model"] = model
    return body


@pytest.fixture
def serve():
    bridges = []

    def start(**options) -> httpx.Client:
        bridge = Bridge()
        bound = bridge.start_blocking(StartConfig(backend="fake", http_base_port=0, **options))
        bridges.append(bridge)
        return httpx.Client(base_url=bound.base_url.removesuffix("/v1"), timeout=30)

    yield start
    for b in bridges:
        b.stop()


def _states(client: httpx.Client) -> dict[str, str]:
    return {m["name"]: m["state"] for m in client.get("/health").json()["models"]}


def test_the_request_model_selects_by_name_and_alias(serve, tmp_path):
    file = tmp_path / "models.toml"
    file.write_text('[models.big]\nmodel = "big-ref"\naliases = ["gpt-4o"]\ncontext_size = 1024\n')
    c = serve(models=["small=small-ref"], models_file=str(file))
    assert _states(c) == {"small": "unloaded", "big": "unloaded"}  # nothing loads before use
    r = c.post("/v1/chat/completions", json=_chat("gpt-4o"))
    assert r.status_code == 200 and r.json()["model"] == "big"
    assert _states(c) == {"small": "unloaded", "big": "loaded"}
    assert c.post("/v1/chat/completions", json=_chat("small")).json()["model"] == "small"
    listed = c.get("/v1/models").json()["data"]
    assert [m["id"] for m in listed] == ["small", "big", "gpt-4o"]
    assert {m["id"]: m["status"]["value"] for m in listed}["big"] == "loaded"
    assert c.get("/v1/models/gpt-4o").json()["id"] == "gpt-4o"
    r = c.post("/v1/chat/completions", json=_chat("gpt-3.5-turbo"))
    assert r.status_code == 404
    err = r.json()["error"]
    assert err["code"] == "model_not_found" and err["param"] == "model"
    assert "'small'" in err["message"] and "'gpt-4o'" in err["message"]
    # no model (or "default"): the first configured one
    assert (
        c.post("/v1/completions", json={"prompt": "x", "max_tokens": 2}).json()["model"] == "small"
    )
    health = {m["name"]: m for m in c.get("/health").json()["models"]}
    assert health["big"]["aliases"] == ["gpt-4o"] and health["big"]["load_seconds"] >= 0


def test_one_configured_model_serves_any_name_unless_strict(serve):
    idle = serve(idle_unload_s=0.2)  # the default model, under the model set's rules
    assert idle.post("/v1/chat/completions", json=_chat("gpt-4o-mini")).status_code == 200
    assert _states(idle) == {"SmolLM2-135M-Instruct.Q4_1": "loaded"}
    c = serve(models=["only=ref"])
    assert c.post("/v1/chat/completions", json=_chat("gpt-4o-mini")).json()["model"] == "only"
    strict = serve(models=["only=ref"], strict_model_names=True)
    assert strict.post("/v1/chat/completions", json=_chat("gpt-4o-mini")).status_code == 404
    assert strict.post("/v1/chat/completions", json=_chat("only")).status_code == 200


def test_max_loaded_models_swaps_the_least_recently_used(serve):
    c = serve(models=["a=ra", "b=rb", "c=rc"], max_loaded_models=2)
    for name in ("a", "b", "a", "c"):  # c evicts b (a was used after b)
        assert c.post("/v1/chat/completions", json=_chat(name)).status_code == 200
    assert _states(c) == {"a": "loaded", "b": "unloaded", "c": "loaded"}
    streamed = c.post("/v1/chat/completions", json=_chat("b", stream=True))
    assert streamed.status_code == 200 and streamed.text.endswith("data: [DONE]\n\n")
    assert _states(c) == {"a": "unloaded", "b": "loaded", "c": "loaded"}


def test_idle_unload_and_keep_alive(serve):
    c = serve(models=["a=ra", "b=rb"], idle_unload_s=0.3)
    c.post("/v1/chat/completions", json=_chat("a"))
    c.post("/v1/chat/completions", json=_chat("b", keep_alive=-1))  # kept however long
    assert _states(c) == {"a": "loaded", "b": "loaded"}
    wait_until(lambda: _states(c)["a"] == "unloaded", "a to idle out", 5)
    assert _states(c) == {"a": "unloaded", "b": "loaded"}
    c.post("/v1/chat/completions", json=_chat("b", keep_alive="0s"))  # unload when idle
    wait_until(lambda: _states(c)["b"] == "unloaded", "b to go once idle", 5)
    r = c.post("/v1/chat/completions", json=_chat("a", keep_alive="soon"))
    assert r.status_code == 400 and r.json()["error"]["param"] == "keep_alive"


def test_a_model_that_fails_to_load_answers_model_load_failed_and_others_serve(serve, tmp_path):
    file = tmp_path / "models.toml"
    file.write_text('[models.broken]\nmodel = "x"\nbackend = "no-such-backend"\n')
    c = serve(models=["good=ref"], models_file=str(file))
    r = c.post("/v1/chat/completions", json=_chat("broken"))
    assert r.status_code == 500 and r.json()["error"]["code"] == "model_load_failed"
    assert "broken" in r.json()["error"]["message"]
    assert c.post("/v1/chat/completions", json=_chat("good")).status_code == 200
    health = c.get("/health")
    assert health.status_code == 200  # good still serves
    body = health.json()
    assert body["status"] == "degraded" and "broken" in body["reason"]
    models = {m["name"]: m for m in body["models"]}
    assert models["broken"]["state"] == "failed" and "no-such-backend" in models["broken"]["reason"]
    assert models["good"]["ready"] is True and models["broken"]["ready"] is False


def test_health_is_a_503_when_no_model_can_serve_and_ok_when_all_can(serve, tmp_path):
    file = tmp_path / "models.toml"
    file.write_text('[models.broken]\nmodel = "x"\nbackend = "no-such-backend"\n')
    c = serve(models_file=str(file))
    assert c.get("/health").json()["status"] == "ok"  # not loaded yet: it may load
    assert c.post("/v1/chat/completions", json=_chat("broken")).status_code == 500
    health = c.get("/health")
    assert health.status_code == 503 and health.json()["status"] == "error"
    ok = serve(models=["a=ra", "b=rb"])
    ok.post("/v1/chat/completions", json=_chat("a"))
    body = ok.get("/health").json()
    assert body["status"] == "ok" and "reason" not in body
    assert {m["name"]: m["ready"] for m in body["models"]} == {"a": True, "b": False}


def test_load_and_unload_endpoints_and_per_model_metrics(serve):
    c = serve(models=["a=ra", "b=rb"])
    r = c.post("/models/load", json={"model": "b"})
    assert r.status_code == 200 and r.json()["success"] is True
    assert _states(c) == {"a": "unloaded", "b": "loaded"}
    c.post("/v1/chat/completions", json=_chat("b"))
    metrics = c.get("/metrics").text
    assert 'dvai_bridge_generated_tokens_total{model="b"}' in metrics
    assert c.post("/models/unload", json={"model": "b"}).json()["was_loaded"] is True
    assert _states(c)["b"] == "unloaded"
    assert c.post("/models/load", json={"model": "nope"}).status_code == 404
    assert c.post("/models/load", json={}).status_code == 400


def test_pinned_models_load_at_start_and_stay(serve, tmp_path):
    file = tmp_path / "models.toml"
    file.write_text('[models.p]\nmodel = "rp"\npinned = true\n[models.q]\nmodel = "rq"\n')
    c = serve(models_file=str(file), max_loaded_models=1, idle_unload_s=0.1)
    assert _states(c) == {"p": "loaded", "q": "unloaded"}
    c.post("/v1/chat/completions", json=_chat("q"))  # over the limit, but p is pinned
    wait_until(lambda: _states(c)["q"] == "unloaded", "q to idle out")
    time.sleep(0.3)  # under test: p stays for longer than its idle time (it would have gone first)
    assert _states(c) == {"p": "loaded", "q": "unloaded"}  # q idled out, p stays


# -- the model set itself ---------------------------------------------------------------------
def _slow_loader(calls: list[str], delay: float = 0.3):
    def load(entry: ModelEntry) -> Scheduler:
        calls.append(entry.name)
        time.sleep(delay)  # the slow load under test
        return Scheduler(FakeBackend(model_id=entry.name))

    return load


def test_racing_requests_for_a_cold_model_load_it_once():
    calls: list[str] = []
    models = ModelSet([ModelEntry("a")], _slow_loader(calls))
    try:
        with ThreadPoolExecutor(4) as pool:
            leases = list(pool.map(lambda _: models.acquire_blocking("a"), range(4)))
        assert calls == ["a"]
        assert len({id(lease.engine) for lease in leases}) == 1
        for lease in leases:
            lease.release()
    finally:
        models.close()


def test_an_evicted_model_finishes_its_running_requests_first():
    calls: list[str] = []
    models = ModelSet([ModelEntry("a"), ModelEntry("b")], _slow_loader(calls, 0), max_loaded=1)
    try:
        held = models.acquire_blocking("a")  # a request still running on a
        got: list[str] = []
        t = threading.Thread(target=lambda: got.append(models.acquire_blocking("b").slot.name))
        t.start()
        wait_until(lambda: models.slots["a"].state == "unloading", "b's load to evict a")
        assert got == []
        assert held.engine.health() is None  # a still serves its request
        held.release()
        t.join(5)
        assert got == ["b"] and models.slots["a"].state == "unloaded"
    finally:
        models.close()


def test_the_memory_budget_evicts_by_measured_size():
    sizes = iter([100, 250, 300, 420])  # rss: before a, after a, before b, after b...
    models = ModelSet(
        [ModelEntry("a"), ModelEntry("b")],
        _slow_loader([], 0),
        budget_bytes=200,
        rss=lambda: next(sizes, 0),
    )
    try:
        models.acquire_blocking("a").release()
        assert models.slots["a"].memory == 150
        models.acquire_blocking("b").release()  # 150 + b's unknown size (0) fits
        assert models.slots["b"].memory == 120
        assert [s.name for s in models.loaded()] == ["a", "b"]  # 270 now: over, but no new load
        models.unload("a")
        models.acquire_blocking("a").release()  # 120 + 150 > 200: b goes first
        assert [s.name for s in models.loaded()] == ["a"]
    finally:
        models.close()


def test_model_entries_and_files(tmp_path):
    assert split_entry("chat=./m.gguf") == ("chat", "./m.gguf")
    assert split_entry("gpt-3.5-turbo=org/repo") == ("gpt-3.5-turbo", "org/repo")
    assert split_entry("https://h/m.gguf#sha256=ab") == (None, "https://h/m.gguf#sha256=ab")
    gguf = tmp_path / "Tiny-Model.Q4.gguf"
    gguf.write_bytes(b"x")
    specs = serving_models(StartConfig(models=[str(gguf), "org/repo"], context_size=512))
    assert [s.name for s in specs] == ["Tiny-Model.Q4", "org/repo"]
    assert specs[0].config.model_path == str(gguf) and specs[0].config.context_size == 512
    with pytest.raises(ConfigurationInvalid, match="given twice"):
        serving_models(StartConfig(models=["a=x", "a=y"]))
    with pytest.raises(ConfigurationInvalid, match="not both"):
        serving_models(StartConfig(models=["a=x"], model_path="y"))
    bad = tmp_path / "bad.toml"
    bad.write_text('[models.a]\nmodel = "x"\nlayers = 3\n')
    with pytest.raises(ConfigurationInvalid, match="unknown key"):
        serving_models(StartConfig(models_file=str(bad)))


def test_a_failed_model_raises_its_error_until_loaded_again():
    attempts: list[str] = []

    def load(entry: ModelEntry) -> Scheduler:
        attempts.append(entry.name)
        if len(attempts) == 1:
            raise RuntimeError("disk on fire")
        return Scheduler(FakeBackend())

    models = ModelSet([ModelEntry("a")], load)
    try:
        for _ in range(2):
            with pytest.raises(ModelLoadFailed, match="disk on fire"):
                models.acquire_blocking("a")
        assert attempts == ["a"]
        models.load("a")  # explicit: tried again
        assert models.slots["a"].state == "loaded"
    finally:
        models.close()


def test_serve_options_one_bare_model_is_model_path_else_a_model_set():
    from dvai_bridge.cli import _model_options

    assert _model_options({"model_path": ("./m.gguf",)})["model_path"] == "./m.gguf"
    assert _model_options({"model_path": ()})["model_path"] is None
    several = _model_options({"model_path": ("a=./m.gguf",)})
    assert several["models"] == ["a=./m.gguf"] and several["model_path"] is None
    assert _model_options({"model_path": ("x", "y")})["models"] == ["x", "y"]
    assert _model_options({"model_path": ("x",), "models_file": "f.toml"})["models"] == ["x"]
    # one model with a model set's option: that model, loaded on demand, unloaded when idle
    (one,) = serving_models(
        StartConfig(model_path="./m.gguf", idle_unload_s=5, model_aliases=["x"])
    )
    assert one.name == "m" and one.aliases == ("x",)


def test_ps_lists_each_running_bridge_with_its_models(serve):
    from click.testing import CliRunner

    from dvai_bridge.cli import main

    c = serve(models=["ps-a=ra", "ps-b=rb"])
    c.post("/models/load", json={"model": "ps-b"})
    out = CliRunner().invoke(main, ["ps"]).output
    mine = out[out.index(str(c.base_url).rstrip("/") + "/v1") :]
    lines = mine.splitlines()[1:3]
    assert lines[0].split()[:2] == ["ps-a", "unloaded"]
    assert lines[1].split()[:2] == ["ps-b", "loaded"] and "MiB" in lines[1]


def test_every_protocol_selects_the_model_by_name(serve):
    """Responses, Messages and the token routes run on the model their ``model`` names, as
    chat does (the fake backend echoes, so each answer shows which model ran)."""
    c = serve(models=["small=small-ref", "big=big-ref"], max_loaded_models=1)
    r = c.post("/v1/responses", json={"model": "big", "input": "hi", "max_output_tokens": 8})
    assert r.status_code == 200 and r.json()["model"] == "big", r.text
    assert _states(c) == {"small": "unloaded", "big": "loaded"}
    r = c.post(
        "/v1/messages",
        json={"model": "small", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]},
    )
    assert r.status_code == 200 and r.json()["model"] == "small", r.text
    assert _states(c) == {"small": "loaded", "big": "unloaded"}
    with c.stream(
        "POST",
        "/v1/responses",
        json={"model": "big", "input": "hi", "stream": True, "max_output_tokens": 8},
    ) as s:
        body = s.read().decode()
    assert s.status_code == 200 and '"model":"big"' in body.replace(" ", "")
    assert c.post("/tokenize", json={"model": "small", "content": "hello"}).status_code == 200
    assert _states(c) == {"small": "loaded", "big": "unloaded"}
    r = c.post(
        "/v1/messages",
        json={"model": "nope", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]},
    )
    assert r.status_code == 404 and r.json()["type"] == "error"
