"""Batching and the prompt cache must not change greedy output, on the real SmolLM2 model.

The reference is the plain path: one sequence at a time through mlx-lm's ``generate_step``,
no prompt cache. Against it: the same prompts decoded together in one batch, and later turns
of conversations whose earlier turns sit in the prompt cache.
"""

from __future__ import annotations

import threading

import pytest

from dvai_bridge.backends.mlx.backend import MLXBackend
from dvai_bridge.core.types import (
    BatchLimits,
    CancelToken,
    Finished,
    GenerationRequest,
    SamplingParams,
    TextDelta,
)
from dvai_bridge.engine.scheduler import Scheduler
from dvai_bridge.progress import ProgressHub

GREEDY = SamplingParams(temperature=0.0)
MAX_TOKENS = 20
QUESTIONS = [
    "What is the capital of France?",
    "Name three primary colors.",
    "Write one sentence about the sea.",
    "What is 12 plus 30?",
]
SYSTEM = {"role": "system", "content": "You are a concise assistant. Answer in one sentence."}


class Run:
    def __init__(self) -> None:
        self.tokens: list[str] = []
        self.text = ""
        self.finished: Finished | None = None
        self.done = threading.Event()

    def __call__(self, event) -> None:
        if isinstance(event, TextDelta):
            self.text += event.text
            self.tokens += [chosen.token for chosen, _ in event.logprobs]
        else:
            self.finished = event
            self.done.set()


@pytest.fixture(scope="module")
def backend() -> MLXBackend:
    return MLXBackend.load(None, context_size=None, progress=ProgressHub())


def submit(scheduler: Scheduler, backend: MLXBackend, messages: list[dict]) -> Run:
    run = Run()
    request = GenerationRequest(
        tuple(backend.tokenizer.chat_tokens(messages)), GREEDY, max_tokens=MAX_TOKENS, logprobs=True
    )
    scheduler.submit(request, run, CancelToken())
    return run


def wait(runs: list[Run]) -> list[Run]:
    for run in runs:
        assert run.done.wait(600), "generation did not finish"
        assert run.finished.reason in ("stop", "length"), run.finished
    return runs


def conversation(question: str, reply: str | None = None) -> list[dict]:
    messages = [SYSTEM, {"role": "user", "content": question}]
    if reply is not None:
        messages += [
            {"role": "assistant", "content": reply},
            {"role": "user", "content": "Say that again, differently."},
        ]
    return messages


@pytest.fixture(scope="module")
def reference(backend: MLXBackend) -> dict[str, list[Run]]:
    """Every prompt alone, in order, with no batch and no prompt cache."""
    plain = Scheduler(backend, limits=BatchLimits(max_batch=1, prompt_cache_bytes=0))
    try:
        first = [wait([submit(plain, backend, conversation(q))])[0] for q in QUESTIONS]
        second = [
            wait([submit(plain, backend, conversation(q, r.text))])[0]
            for q, r in zip(QUESTIONS, first, strict=True)
        ]
    finally:
        plain.close()
    return {"first": first, "second": second}


def test_batched_greedy_output_is_token_for_token_the_same(backend, reference):
    batched = Scheduler(backend, limits=BatchLimits(max_batch=8, prompt_cache_bytes=0))
    try:
        runs = wait([submit(batched, backend, conversation(q)) for q in QUESTIONS])
    finally:
        batched.close()
    for ref, run in zip(reference["first"], runs, strict=True):
        assert run.tokens == ref.tokens
        assert run.text == ref.text and run.tokens


def test_cached_prefixes_give_the_same_tokens_and_are_reported(backend, reference):
    cached = Scheduler(backend, limits=BatchLimits(max_batch=8, prompt_cache_bytes=1 << 30))
    try:
        first = wait([submit(cached, backend, conversation(QUESTIONS[0]))])
        first += wait([submit(cached, backend, conversation(q)) for q in QUESTIONS[1:]])
        second = wait(
            [
                submit(cached, backend, conversation(q, r.text))
                for q, r in zip(QUESTIONS, first, strict=True)
            ]
        )
    finally:
        cached.close()
    # Once one conversation has finished, the others reuse the shared system prompt.
    assert all(r.finished.cached_tokens > 0 for r in first[1:])
    for ref, run in zip(reference["first"], first, strict=True):
        assert run.tokens == ref.tokens
    for ref, run in zip(reference["second"], second, strict=True):
        prompt = run.finished.prompt_tokens
        assert run.finished.cached_tokens > prompt // 2, (run.finished, prompt)
        assert run.tokens == ref.tokens


def test_the_fast_cpu_kernels_give_mlxs_greedy_tokens(backend):
    """On the CPU the backend computes SiLU and attention with its own exp (cpu_tuning.kernels);
    greedy output must match MLX's own ops, on a short prompt and on one long enough for chunked
    prefill and several causal query blocks."""
    import mlx.core as mx
    from mlx_lm.generate import generate_step

    from dvai_bridge.backends.mlx.cpu_tuning import kernels as cpu_kernels

    if not backend.device.is_cpu:
        pytest.skip("the kernels are used on the CPU device only")
    story = " ".join(f"Line {i}: the keeper lit the lamp and watched the ships." for i in range(60))
    prompts = [
        backend.tokenizer.chat_tokens(conversation(QUESTIONS[0])),
        backend.tokenizer.chat_tokens([{"role": "user", "content": story + " Summarize."}]),
    ]
    assert len(prompts[1]) > 700

    def greedy(tokens: list[int]) -> list[int]:
        steps = generate_step(mx.array(tokens), backend.model, max_tokens=24, prefill_step_size=512)
        return [int(t) for t, _ in steps]

    assert cpu_kernels.install(backend.model)
    try:
        fast = [greedy(p) for p in prompts]
        cpu_kernels.uninstall(backend.model)
        plain = [greedy(p) for p in prompts]
    finally:
        cpu_kernels.install(backend.model)
    assert fast == plain
    assert all(len(t) == 24 for t in fast)
