"""Tensor parallel, the default where a model's heads divide by the group size.

The embedded SmolLM2 has 9 attention heads and 3 KV heads, which 2 ranks cannot split, so it
is served as a pipeline (test_group.py). This test builds a random-weight Llama of the same
width with 8 heads and 2 KV heads (4 layers, float32, the SmolLM2 tokenizer) and serves it
sliced across the two ranks.
"""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path
from typing import Any

import pytest

from .conftest import assert_group_formed, chat, launch_group, start_one_process

PROMPTS = ["What is the capital of France?", "Count to five."]
MAX_TOKENS = 12


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import mlx.core as mx
    from mlx.utils import tree_flatten
    from mlx_lm.models import llama

    from dvai_bridge.backends.mlx.gguf_import import cached_import
    from dvai_bridge.store.resolve import embedded_default_gguf

    smol = cached_import(embedded_default_gguf())
    folder = tmp_path_factory.mktemp("tp-llama")
    config = json.loads((smol / "config.json").read_text())
    for key in ("quantization", "quantization_config"):
        config.pop(key, None)
    config.update(num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=2, head_dim=64)
    mx.random.seed(7)
    model = llama.Model(llama.ModelArgs.from_dict(config))
    mx.save_safetensors(str(folder / "model.safetensors"), dict(tree_flatten(model.parameters())))
    (folder / "config.json").write_text(json.dumps(config))
    for f in smol.iterdir():
        if f.name.startswith(("tokenizer", "special_tokens", "generation_config")):
            shutil.copy(f, folder / f.name)
    return folder


def _tokens(reply: dict[str, Any]) -> list[str]:
    return [t["token"] for t in reply["choices"][0]["logprobs"]["content"]]


def test_tensor_parallel_serves_like_one_process(checkpoint: Path) -> None:
    model = ["--model", str(checkpoint)]
    one = start_one_process(*model)
    try:
        want = {p: _tokens(chat(one, p, MAX_TOKENS, logprobs=True)) for p in PROMPTS}
    finally:
        one.stop()
    group = launch_group(*model)
    try:
        assert_group_formed(group, "tensor")
        for prompt in PROMPTS:
            # Sliced matmuls are summed across ranks in another order than one process sums
            # them; greedy tokens still agree on this model (a near tie could flip one).
            assert _tokens(chat(group, prompt, MAX_TOKENS, logprobs=True)) == want[prompt]
        replies: list[dict[str, Any]] = []
        threads = [
            threading.Thread(
                target=lambda p=p: replies.append(
                    chat(group, p, MAX_TOKENS, temperature=0.8, seed=1)
                )
            )
            for p in PROMPTS * 2
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(300)
        assert len(replies) == 4
        assert all(r["choices"][0]["finish_reason"] in ("stop", "length") for r in replies)
    finally:
        group.stop()
