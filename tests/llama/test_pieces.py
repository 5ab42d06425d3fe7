"""Pure pieces of the llama backend, without a model: sampling math, threads, GGUF header,
chat template, and what ``backend="auto"`` picks."""

from __future__ import annotations

import logging
import os
import struct

import numpy as np
import pytest

from dvai_bridge.backends import probe, registry
from dvai_bridge.backends.cpu_cores import count_cores, physical_cores
from dvai_bridge.backends.llama_cpp.gguf import read_metadata
from dvai_bridge.backends.llama_cpp.sampling import adjusted_logits, log_softmax, top_entries
from dvai_bridge.backends.llama_cpp.template import ChatTemplate
from dvai_bridge.backends.mlx.device import MLXDevice
from dvai_bridge.config import StartConfig
from dvai_bridge.core.types import SamplingParams
from dvai_bridge.errors import BackendUnavailable, InvalidRequest, ModelLoadFailed


def test_adjusted_logits_apply_bias_then_repetition_then_openai_penalties():
    raw = np.array([1.0, -1.0, 2.0, 0.5], dtype=np.float32)
    p = SamplingParams(
        logit_bias=((3, 10.0),),
        repetition_penalty=2.0,
        presence_penalty=0.5,
        frequency_penalty=0.25,
    )
    out = adjusted_logits(raw, p, generated=[2, 2, 1], recent=[0, 1, 2, 2, 1])
    assert out[0] == pytest.approx(1.0 / 2)  # repeated, positive: divided
    assert out[1] == pytest.approx(-1.0 * 2 - 0.5 - 0.25)  # negative: multiplied; once
    assert out[2] == pytest.approx(2.0 / 2 - 0.5 - 0.25 * 2)  # generated twice
    assert out[3] == pytest.approx(10.5)  # only the bias
    assert raw[0] == 1.0  # the row itself is untouched


def test_penalties_count_the_completion_only():
    raw = np.zeros(4, dtype=np.float32)
    p = SamplingParams(presence_penalty=1.0)
    assert np.all(adjusted_logits(raw, p, generated=[], recent=[0, 1, 2]) == 0)


def test_log_softmax_and_top_entries():
    lp = log_softmax(np.array([0.0, 3.0, 1.0, 3.0], dtype=np.float32))
    assert np.exp(lp).sum() == pytest.approx(1.0, abs=1e-6)
    top = top_entries(lp, 3)
    assert [t for t, _ in top] == [1, 3, 2]  # ties keep id order
    assert top[0][1] == pytest.approx(top[1][1])
    assert top_entries(lp, 0) == ()


def _topology(root, siblings: dict[int, str]) -> None:
    for cpu, listed in siblings.items():
        (root / f"cpu{cpu}" / "topology").mkdir(parents=True)
        (root / f"cpu{cpu}" / "topology" / "thread_siblings_list").write_text(listed + "\n")


def test_physical_cores_count_smt_siblings_once_and_follow_affinity(tmp_path):
    _topology(tmp_path, {0: "0,2", 1: "1,3", 2: "0,2", 3: "1,3"})  # 2 cores, 2 threads each
    assert count_cores({0, 1, 2, 3}, tmp_path) == 2
    assert count_cores({0, 2}, tmp_path) == 1  # both siblings of one core
    assert count_cores({0, 1}, tmp_path) == 2  # one thread of each core
    assert count_cores({0, 7}, tmp_path) == 2  # no topology for cpu7: a core of its own
    assert 1 <= physical_cores() <= (os.cpu_count() or 1)


def _gguf(path, kv: list[tuple[str, int, bytes]]) -> None:
    body = b"".join(
        struct.pack("<Q", len(k)) + k.encode() + struct.pack("<I", t) + v for k, t, v in kv
    )
    path.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 0, len(kv)) + body)


def test_read_metadata_reads_scalars_and_strings_and_skips_arrays(tmp_path):
    f = tmp_path / "m.gguf"
    strings = struct.pack("<IQ", 8, 2) + b"".join(struct.pack("<Q", 2) + b"ab" for _ in range(2))
    _gguf(
        f,
        [
            ("general.architecture", 8, struct.pack("<Q", 5) + b"llama"),
            ("tokenizer.ggml.tokens", 9, strings),
            ("llama.context_length", 4, struct.pack("<I", 2048)),
            ("x.scores", 9, struct.pack("<IQ", 6, 3) + b"\0" * 12),
            ("x.flag", 7, b"\1"),
        ],
    )
    assert read_metadata(f) == {
        "general.architecture": "llama",
        "llama.context_length": 2048,
        "x.flag": True,
    }
    (tmp_path / "bad.gguf").write_bytes(b"NOPE")
    with pytest.raises(ModelLoadFailed):
        read_metadata(tmp_path / "bad.gguf")


def test_chat_template_renders_like_transformers_and_refuses_with_a_400():
    source = (
        "{% for m in messages %}{% if m['role'] == 'tool' %}"
        "{{ raise_exception('no tools') }}{% endif %}"
        "{{ bos_token }}{{ m['role'] }}: {{ m['content'] | tojson }}\n{% endfor %}"
        "{% if add_generation_prompt %}assistant:{% endif %}"
    )
    t = ChatTemplate(source, bos_token="<s>", eos_token="</s>", model_id="m")
    assert t.render([{"role": "user", "content": "é"}]) == '<s>user: "é"\nassistant:'
    with pytest.raises(InvalidRequest) as err:
        t.render([{"role": "tool", "content": "x"}])
    assert err.value.param == "messages"
    fallback = ChatTemplate(None, bos_token="", eos_token="", model_id="m")
    assert "<|im_start|>assistant" in fallback.render([{"role": "user", "content": "hi"}])


@pytest.mark.parametrize(
    ("device", "llama_installed", "expected"),
    [
        ("metal", True, "mlx"),
        ("cuda", True, "mlx"),
        ("cpu", True, "llama"),
        ("cpu", False, "mlx"),
        (None, True, "llama"),
    ],
)
def test_auto_picks_llama_for_gguf_unless_mlx_has_a_gpu(
    monkeypatch, caplog, device, llama_installed, expected
):
    def select_device() -> MLXDevice:
        if device is None:
            raise BackendUnavailable("no MLX here")
        return MLXDevice(device)

    real_find_spec = registry.importlib.util.find_spec
    monkeypatch.setattr("dvai_bridge.backends.mlx.device.select_device", select_device)
    monkeypatch.setattr(
        registry.importlib.util,
        "find_spec",
        lambda name: (
            (object() if llama_installed else None) if name == "llama_cpp" else real_find_spec(name)
        ),
    )
    # the probe (tests/backends/test_probe.py) says this llama build decodes here
    monkeypatch.setattr(probe, "installed", lambda backend: llama_installed)
    monkeypatch.setattr(
        probe, "probe", lambda backend, model: probe.ProbeResult(backend, True, "decoded")
    )
    caplog.set_level(logging.INFO, logger="dvai_bridge.backends.registry")
    assert registry.resolve_name(StartConfig(model_path="/m/x.gguf")) == expected
    assert registry.resolve_name(StartConfig()) == expected  # the embedded default is a GGUF
    assert f"chose {expected}" in caplog.text
    if llama_installed:
        assert registry.resolve_name(StartConfig(embedding_mode=True)) == "llama"


def test_auto_keeps_mlx_references_on_mlx_and_explicit_names_as_given():
    assert registry.resolve_name(StartConfig(model_path="mlx-community/x-4bit")) == "mlx"
    assert registry.resolve_name(StartConfig(backend="llama", model_path="org/x")) == "llama"
