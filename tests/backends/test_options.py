"""Each backend's own Options: validated for the chosen backend, refused naming the option and
the backend, passed to the factory alone; the old StartConfig keywords still work."""

from __future__ import annotations

import re

import httpx
import pytest

from dvai_bridge import Bridge, ConfigurationInvalid, StartConfig
from dvai_bridge.backends import registry
from dvai_bridge.backends.fake import FakeOptions
from dvai_bridge.backends.llama_cpp.options import LlamaOptions
from dvai_bridge.backends.mlx.options import MLXOptions
from dvai_bridge.backends.options import BackendLoad, BackendOptions
from dvai_bridge.model_specs import serving_models


def test_the_old_keywords_are_backend_options_checked_at_once():
    config = StartConfig(threads="2", gpu_layers=-1, embedding_model=" m ", shard="tensor")
    assert config.backend_options == {
        "threads": 2,
        "gpu_layers": -1,
        "embedding_model": "m",
        "shard": "tensor",
    }
    assert StartConfig(backend_options={"threads": 2}) == StartConfig(threads=2)
    with pytest.raises(ConfigurationInvalid, match="Invalid threads for the llama backend") as e:
        StartConfig.build(threads=0)
    assert e.value.param == "threads"
    with pytest.raises(ConfigurationInvalid, match="shard for the mlx backend") as e:
        StartConfig.build(backend_options={"shard": "diagonal"})
    assert e.value.param == "shard"


def test_the_factory_gets_its_own_options_only():
    got: list[BackendLoad] = []

    class Mine(BackendOptions):
        level: int = 1

    def factory(load, progress):
        got.append(load)
        raise ConfigurationInvalid("stop here")

    registry.register_backend("opts-probe", factory, Mine)
    config = StartConfig(
        backend="opts-probe",
        model_path="m",
        context_size=64,
        threads=3,  # the llama backend's: not this backend's, left out
        backend_options={"level": 5},
    )
    with pytest.raises(ConfigurationInvalid, match="stop here"):
        registry.create_backend(config, None)  # type: ignore[arg-type]
    assert got == [BackendLoad("m", 64, Mine(level=5))]
    assert registry.options_for("llama", {"threads": 2, "shard": "tensor"}) == LlamaOptions(
        threads=2
    )
    assert registry.options_for("mlx", {"threads": 2, "shard": "tensor"}) == MLXOptions(
        shard="tensor"
    )


@pytest.mark.parametrize(
    ("backend", "options", "field", "message"),
    [
        ("fake", {"token_dleay": 1}, "token_dleay", "Unknown option 'token_dleay' for the fake"),
        ("fake", {"token_delay": -1}, "token_delay", "Invalid token_delay for the fake backend"),
        ("llama", {"n_batch": 1}, "n_batch", "Invalid n_batch for the llama backend"),
        ("llama", {"embedding_model": "x"}, "embedding_model", "is for the mlx backend"),
        ("coreml", {"bogus": 1}, "bogus", "for the coreml backend (it takes: no options)"),
        ("auto", {"bogus": 1}, "bogus", "Unknown backend option 'bogus': no backend takes it"),
    ],
)
def test_an_unknown_or_invalid_option_is_refused_naming_it_and_the_backend(
    backend, options, field, message
):
    with pytest.raises(ConfigurationInvalid, match=re.escape(message)) as e:
        registry.check_options(StartConfig(backend=backend, backend_options=options))
    assert e.value.param == field


def test_a_bad_option_fails_the_start_before_any_port_or_model(tmp_path):
    bridge = Bridge()
    with pytest.raises(ConfigurationInvalid, match="fake backend") as e:
        bridge.start_blocking(
            StartConfig(backend="fake", http_base_port=0, backend_options={"replyy": "x"})
        )
    assert e.value.param == "replyy" and bridge.status().running is False


def test_the_fake_backends_options_reach_it_through_a_real_server():
    bridge = Bridge()
    server = bridge.start_blocking(
        StartConfig(
            backend="fake",
            http_base_port=0,
            log_level="warning",
            backend_options={"reply": "configured", "model_id": "opt-model"},
        )
    )
    try:
        r = httpx.post(
            server.base_url + "/chat/completions",
            json={"messages": [{"role": "user", "content": "hi"}]},
        )
        assert r.json()["choices"][0]["message"]["content"] == "configured"
        assert server.model_id == "opt-model"
    finally:
        bridge.stop()


def test_a_models_file_sets_each_models_backend_options(tmp_path):
    f = tmp_path / "models.toml"
    f.write_text(
        '[models.a]\nmodel = "x.gguf"\nbackend = "llama"\nthreads = 2\n'
        '[models.b]\nmodel = "y"\nbackend = "fake"\nbackend_options = { reply = "b" }\n'
    )
    a, b = serving_models(StartConfig(models_file=str(f), gpu_layers=-1, threads=1))
    assert a.config.backend_options == {"threads": 2, "gpu_layers": -1}  # its own over the server's
    assert b.config.backend_options == {"threads": 1, "gpu_layers": -1, "reply": "b"}
    f.write_text('[models.a]\nmodel = "y"\nbackend = "fake"\ntoken_delay = -1\n')
    with pytest.raises(
        ConfigurationInvalid, match=r"\[models.a\]: Invalid token_delay for the fake"
    ):
        serving_models(StartConfig(models_file=str(f)))
    f.write_text('[models.a]\nmodel = "y"\nlayers = 3\n')
    with pytest.raises(ConfigurationInvalid, match=r"unknown key\(s\) \['layers'\]"):
        serving_models(StartConfig(models_file=str(f)))


def test_fake_options_match_the_fake_backends_own_defaults():
    import inspect

    from dvai_bridge.backends.fake import FakeBackend

    params = inspect.signature(FakeBackend).parameters
    for name, field in FakeOptions.model_fields.items():
        assert params[name].default == field.default, name
