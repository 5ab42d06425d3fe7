"""/v1/embeddings over a deterministic fake embedder, in-process: shapes, encodings, errors."""

from __future__ import annotations

import base64
from collections.abc import Sequence

import numpy as np
import pytest
from fastapi.testclient import TestClient

from dvai_bridge.backends.fake import FakeBackend
from dvai_bridge.core.embedder import Embedder
from dvai_bridge.engine.async_engine import AsyncEngine
from dvai_bridge.engine.scheduler import Scheduler
from dvai_bridge.http.app import create_app
from dvai_bridge.protocol.service import OpenAIService


class FakeEmbedder(Embedder):
    """Bytes are tokens (+ 256 as a framing token); the vector is a byte histogram."""

    model_id = "fake-embed"
    dimensions = 8
    max_tokens = 48
    vocab_size = 257

    def __init__(self, truncatable: bool = False) -> None:
        super().__init__()
        self.truncatable = truncatable
        self.calls: list[list[list[int]]] = []

    def tokenize(self, text: str) -> list[int]:
        return self.frame(list(text.encode("utf-8")))

    def frame(self, tokens: Sequence[int]) -> list[int]:
        out = list(tokens)
        return out if out and out[0] == 256 else [256, *out]

    def _embed(self, batch: list[list[int]]) -> np.ndarray:
        self.calls.append(batch)
        out = np.zeros((len(batch), self.dimensions), dtype=np.float32)
        for row, tokens in enumerate(batch):
            for t in tokens:
                out[row, t % self.dimensions] += 1.0 + t / 1000
        return out


def _client(backend: FakeBackend, **names) -> tuple[TestClient, Scheduler]:
    scheduler = Scheduler(backend)
    app = create_app(OpenAIService(AsyncEngine(scheduler), **names))
    return TestClient(app, base_url="http://127.0.0.1", raise_server_exceptions=False), scheduler


@pytest.fixture
def embedder() -> FakeEmbedder:
    return FakeEmbedder()


@pytest.fixture
def client(embedder):
    backend = FakeBackend()
    backend.embedder = embedder  # type: ignore[attr-defined]
    client, scheduler = _client(backend)
    yield client
    client.close()
    scheduler.close()


def _post(client: TestClient, **body):
    return client.post("/v1/embeddings", json=body)


def _assert_error(r, status: int, param: str | None = None, mentions: str = "") -> dict:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    if param is not None:
        assert err["param"] == param
    assert mentions.lower() in err["message"].lower()
    return err


def test_a_string_gives_one_normalized_vector_with_usage(client, embedder):
    body = _post(client, input="abc").json()
    assert body["object"] == "list"
    assert body["model"] == "fake-embed"
    (item,) = body["data"]
    assert item["object"] == "embedding" and item["index"] == 0
    vec = np.array(item["embedding"])
    assert vec.shape == (8,)
    assert np.linalg.norm(vec) == pytest.approx(1.0, abs=1e-6)
    assert body["usage"] == {"prompt_tokens": 4, "total_tokens": 4}  # framing token + 3 bytes
    assert embedder.calls == [[[256, 97, 98, 99]]]


def test_lists_keep_their_order_and_match_single_requests(client):
    texts = ["first text", "b", "a third, longer text than the others"]
    batch = _post(client, input=texts).json()
    assert [d["index"] for d in batch["data"]] == [0, 1, 2]
    for i, text in enumerate(texts):
        single = _post(client, input=text).json()["data"][0]["embedding"]
        assert np.allclose(batch["data"][i]["embedding"], single, atol=1e-6)
    assert batch["usage"]["prompt_tokens"] == sum(len(t.encode()) + 1 for t in texts)


def test_token_ids_are_framed_and_equal_the_text(client):
    text = _post(client, input="hi").json()["data"][0]["embedding"]
    ids = _post(client, input=[104, 105]).json()
    assert np.allclose(ids["data"][0]["embedding"], text, atol=1e-6)
    lists = _post(client, input=[[104, 105], [256, 104, 105]]).json()
    assert len(lists["data"]) == 2
    assert np.allclose(lists["data"][1]["embedding"], text, atol=1e-6)


def test_base64_is_little_endian_float32_of_the_same_vector(client):
    floats = _post(client, input="abc").json()["data"][0]["embedding"]
    b64 = _post(client, input="abc", encoding_format="base64").json()["data"][0]["embedding"]
    decoded = np.frombuffer(base64.b64decode(b64), dtype="<f4")
    assert np.allclose(decoded, floats, atol=1e-7)


def test_dimensions_equal_to_the_model_is_accepted(client):
    body = _post(client, input="abc", dimensions=8).json()
    assert len(body["data"][0]["embedding"]) == 8


def test_dimensions_on_a_model_not_trained_for_it_is_a_400(client):
    _assert_error(_post(client, input="abc", dimensions=4), 400, "dimensions", "Matryoshka")
    _assert_error(_post(client, input="abc", dimensions=9), 400, "dimensions")


def test_dimensions_truncate_and_renormalize_when_the_model_allows():
    backend = FakeBackend()
    backend.embedder = FakeEmbedder(truncatable=True)  # type: ignore[attr-defined]
    client, scheduler = _client(backend)
    try:
        full = np.array(_post(client, input="abcdefgh").json()["data"][0]["embedding"])
        short = np.array(
            _post(client, input="abcdefgh", dimensions=3).json()["data"][0]["embedding"]
        )
        assert short.shape == (3,)
        assert np.linalg.norm(short) == pytest.approx(1.0, abs=1e-6)
        assert np.allclose(short, full[:3] / np.linalg.norm(full[:3]), atol=1e-6)
    finally:
        client.close()
        scheduler.close()


@pytest.mark.parametrize("bad", ["", [], [""], ["ok", ""], [[]]])
def test_empty_inputs_are_a_400(client, bad):
    _assert_error(_post(client, input=bad), 400, "input")


def test_too_long_an_input_is_context_length_exceeded(client):
    err = _assert_error(_post(client, input=["short", "x" * 60]), 400, "input", "input[1]")
    assert err["code"] == "context_length_exceeded"


def test_token_ids_outside_the_vocabulary_are_a_400(client):
    _assert_error(_post(client, input=[1, 2, 999]), 400, "input", "vocabulary")
    _assert_error(_post(client, input=[[1], [-1]]), 400, "input")


def test_too_many_inputs_is_a_400(client):
    _assert_error(_post(client, input=["a"] * 2049), 400, "input", "2048")


def test_wrong_shapes_and_formats_are_400s(client):
    for body in (
        {"input": 5},
        {"input": [1.5]},
        {"input": "a", "encoding_format": "int8"},
        {"input": "a", "dimensions": 0},
        {},
    ):
        r = client.post("/v1/embeddings", json=body)
        assert r.status_code == 400, (body, r.text)
        assert set(r.json()["error"]) == {"message", "type", "param", "code"}


def test_the_model_field_names_the_embedder_or_the_chat_model(client):
    assert _post(client, input="a", model="fake-embed").status_code == 200
    assert _post(client, input="a", model="fake-model").status_code == 200
    r = _post(client, input="a", model="text-embedding-3-small")  # a client library's default
    assert r.status_code == 200 and r.json()["model"] == "fake-embed"


def test_strict_names_refuse_other_embedding_model_names(embedder):
    backend = FakeBackend()
    backend.embedder = embedder  # type: ignore[attr-defined]
    client, scheduler = _client(backend, strict_model_names=True)
    try:
        assert _post(client, input="a", model="fake-embed").status_code == 200
        _assert_error(_post(client, input="a", model="other"), 404, "model")
    finally:
        client.close()
        scheduler.close()


def test_no_embedder_on_a_chat_backend_is_a_501_naming_the_alternatives():
    client, scheduler = _client(FakeBackend())
    try:
        err = _assert_error(_post(client, input="a"), 501, "model", "embedding_mode")
        assert "embedding_model" in err["message"] and "llama" in err["message"]
    finally:
        client.close()
        scheduler.close()


def test_a_backend_that_could_embed_with_a_setting_answers_the_same_501_with_the_hint():
    backend = FakeBackend()
    backend.embedding_hint = "Start it with embedding_mode=True."  # type: ignore[attr-defined]
    client, scheduler = _client(backend)
    try:  # one answer on both backends (was a 400 on llama): 501, not to be retried
        r = _post(client, input="a")
        _assert_error(r, 501, "model", "embedding_mode=True")
        assert r.headers["x-should-retry"] == "false"
    finally:
        client.close()
        scheduler.close()
