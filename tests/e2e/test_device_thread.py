"""One thread owns the device: what the engine thread does with MLX, and what runs elsewhere.

Templating and tokenizing run on a pool of threads (so a long template does not hold up
decoding); they use Jinja and the Rust ``tokenizers``, not MLX. These tests show that on the
real model: concurrent calls give the serial answers, and no MLX array is evaluated by them.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from dvai_bridge.backends.mlx.backend import MLXBackend
from dvai_bridge.progress import ProgressHub


@pytest.fixture(scope="module")
def backend():
    b = MLXBackend.load(None, context_size=None, progress=ProgressHub())
    yield b
    b.close()


def chats(n: int) -> list[list[dict]]:
    return [
        [
            {"role": "system", "content": f"You are assistant number {i}."},
            {"role": "user", "content": "Tell me about lighthouses. " * (i % 5 + 1)},
        ]
        for i in range(n)
    ]


def test_templating_and_tokenizing_from_many_threads_give_the_serial_answers(backend):
    convs = chats(32)
    serial = [backend.tokenizer.chat_tokens(c) for c in convs]
    texts = [f"prompt {i}: " + "waves " * i for i in range(32)]
    serial_tok = [backend.tokenizer.tokenize(t) for t in texts]
    with ThreadPoolExecutor(8) as pool:
        assert list(pool.map(backend.tokenizer.chat_tokens, convs)) == serial
        assert list(pool.map(backend.tokenizer.tokenize, texts)) == serial_tok
        assert list(pool.map(backend.tokenizer.decode, serial_tok)) == [
            backend.tokenizer.decode(t) for t in serial_tok
        ]


def test_templating_and_tokenizing_do_not_evaluate_mlx_arrays(backend, monkeypatch):
    import mlx.core as mx

    calls: list[str] = []
    for name in ("eval", "async_eval"):
        real = getattr(mx, name)

        def spy(*a, _real=real, _name=name, **k):
            calls.append(f"{_name} on {threading.current_thread().name}")
            return _real(*a, **k)

        monkeypatch.setattr(mx, name, spy)
    backend.tokenizer.chat_tokens(chats(1)[0])
    backend.tokenizer.tokenize("hello there")
    backend.tokenizer.decode([1, 2, 3])
    backend.tokenizer.grammar_tokenizer()
    assert calls == []
