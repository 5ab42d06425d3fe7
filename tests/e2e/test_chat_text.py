"""Issue 13 item 9 on the MLX backend (the embedded SmolLM2): message text that writes the
template's markers is tokenized as text; normal chats tokenize exactly as before."""

from __future__ import annotations

import pytest

from dvai_bridge.backends.mlx.backend import MLXBackend
from dvai_bridge.progress import ProgressHub
from tests.chat_text_cases import check_injection_is_text, check_normal_chats_unchanged


@pytest.fixture(scope="module")
def backend():
    # Not closed: MLXBackend.close belongs to the engine thread (it clears that thread's MLX
    # streams, which this thread still needs for the next module's model).
    return MLXBackend.load(None, context_size=2048, progress=ProgressHub())


def _old(b: MLXBackend):
    def encode(messages, tools):
        text = b.tokenizer.hf.apply_chat_template(
            messages, tools=tools, add_generation_prompt=True, tokenize=False
        )
        return list(b.tokenizer.hf.encode(text, add_special_tokens=False))

    return encode


def test_normal_chats_tokenize_as_before(backend):
    assert check_normal_chats_unchanged(backend.tokenizer.chat_tokens, _old(backend)) == 5


def test_user_text_cannot_write_control_tokens(backend):
    ids = backend.tokenizer.hf.convert_tokens_to_ids(["<|im_start|>", "<|im_end|>"])
    check_injection_is_text(backend.tokenizer.chat_tokens, _old(backend), *ids)
