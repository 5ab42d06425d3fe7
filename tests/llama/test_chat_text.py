"""Issue 13 item 9 on the llama backend (the same SmolLM2 GGUF): message text that writes the
template's markers is tokenized as text; normal chats tokenize exactly as before."""

from __future__ import annotations

import pytest

from dvai_bridge.backends.llama_cpp.backend import LlamaBackend
from dvai_bridge.backends.registry import backend_load
from dvai_bridge.config import StartConfig
from dvai_bridge.progress import ProgressHub
from tests.chat_text_cases import check_injection_is_text, check_normal_chats_unchanged


@pytest.fixture(scope="module")
def backend(gguf_path):
    b = LlamaBackend.load(
        backend_load(
            StartConfig(backend="llama", model_path=gguf_path, context_size=2048, threads=1),
            "llama",
        ),
        ProgressHub(),
    )
    yield b
    b.close()


def _old(b: LlamaBackend):
    tok = b.tokenizer
    return lambda messages, tools: tok._tokenize(tok.template.render(messages, tools), add_bos=True)


def test_normal_chats_tokenize_as_before(backend):
    assert check_normal_chats_unchanged(backend.tokenizer.chat_tokens, _old(backend)) == 5


def test_user_text_cannot_write_control_tokens(backend):
    ids = [
        backend.llm.tokenize(s.encode(), add_bos=False, special=True)[0]
        for s in ("<|im_start|>", "<|im_end|>")
    ]
    check_injection_is_text(backend.tokenizer.chat_tokens, _old(backend), *ids)
