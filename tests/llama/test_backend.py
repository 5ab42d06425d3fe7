"""The llama backend itself on the real SmolLM2 GGUF: parity with llama-cpp-python, logprobs,
sampling fields, prefix reuse across turns, and cancellation inside a long prefill."""

from __future__ import annotations

import threading
import time

import pytest

from dvai_bridge.backends.cpu_cores import physical_cores
from dvai_bridge.backends.llama_cpp.backend import LlamaBackend
from dvai_bridge.backends.registry import backend_load
from dvai_bridge.config import StartConfig
from dvai_bridge.core.types import CancelToken, GenerationRequest, Prefilled, SamplingParams
from dvai_bridge.errors import ContextLengthExceeded, InvalidRequest
from dvai_bridge.progress import ProgressHub

GREEDY = SamplingParams(temperature=0.0)
QUESTION = [{"role": "user", "content": "Name three colours of the rainbow."}]


@pytest.fixture(scope="module")
def backend(gguf_path):
    b = LlamaBackend.load(
        backend_load(
            StartConfig(backend="llama", model_path=gguf_path, context_size=4096), "llama"
        ),
        ProgressHub(),
    )
    yield b
    b.close()


def run(b: LlamaBackend, prompt, max_tokens=12, sampling=GREEDY, cancel=None, **kw):
    """The choices until EOS or max_tokens, as the engine would take them."""
    return run_cached(b, prompt, max_tokens, sampling, cancel, **kw)[0]


def run_cached(b: LlamaBackend, prompt, max_tokens=12, sampling=GREEDY, cancel=None, **kw):
    """``run``'s choices, and how many prompt tokens the backend said came from its cache."""
    out, cached = [], None
    steps = b.generate(
        GenerationRequest(tuple(prompt), sampling, max_tokens=max_tokens, **kw),
        cancel or CancelToken(),
    )
    try:
        for choice in steps:
            if isinstance(choice, Prefilled):
                cached = choice.cached_tokens
                continue
            if choice.token_id in b.tokenizer.eos_token_ids:
                break
            out.append(choice)
            if len(out) >= max_tokens:
                break
    finally:
        steps.close()
    return out, cached


def ids(choices) -> list[int]:
    return [c.token_id for c in choices]


def test_loads_with_physical_cores_and_the_requested_context(backend):
    assert backend.threads == physical_cores()
    assert backend.context_length == 4096
    assert backend.model_id == "SmolLM2-135M-Instruct.Q4_1"
    assert backend.tokenizer.eos_token_ids  # <|im_end|> at least
    assert backend.embedder is None


def test_greedy_tokens_equal_llama_cpp_python_on_the_same_prompt(backend, gguf_path):
    from llama_cpp import Llama

    prompt = backend.tokenizer.chat_tokens(QUESTION)
    ours = ids(run(backend, prompt, max_tokens=16))
    llm = Llama(gguf_path, n_ctx=512, n_threads=physical_cores(), verbose=False)
    try:
        theirs = []
        for token in llm.generate(prompt, temp=0.0, top_k=1, repeat_penalty=1.0):
            if token in backend.tokenizer.eos_token_ids or len(theirs) >= 16:
                break
            theirs.append(token)
    finally:
        llm.close()
    assert ours == theirs
    assert backend.tokenizer.decode(ours).strip()


def test_the_chat_template_comes_from_the_gguf(backend):
    text = backend.tokenizer.decode(backend.tokenizer.chat_tokens(QUESTION))
    # SmolLM2's template adds its default system prompt; specials are not in decoded text
    assert "You are a helpful AI assistant named SmolLM" in text
    assert text.rstrip().endswith("assistant")


def test_logprobs_are_a_distribution_and_greedy_picks_the_top(backend):
    prompt = backend.tokenizer.chat_tokens(QUESTION)
    choices = run(backend, prompt, max_tokens=4, logprobs=True, top_logprobs=5)
    for c in choices:
        assert len(c.top) == 5
        values = [lp for _, lp in c.top]
        assert values == sorted(values, reverse=True)
        assert c.top[0][0] == c.token_id
        assert c.logprob == pytest.approx(c.top[0][1])
        assert all(lp <= 0 for lp in values)
    plain = run(backend, prompt, max_tokens=4)
    assert ids(plain) == ids(choices)


def test_seed_makes_sampling_repeatable(backend):
    prompt = backend.tokenizer.chat_tokens(QUESTION)
    hot = SamplingParams(temperature=1.2, seed=7)
    first = ids(run(backend, prompt, sampling=hot))
    assert ids(run(backend, prompt, sampling=hot)) == first
    others = {
        tuple(ids(run(backend, prompt, sampling=SamplingParams(temperature=1.2, seed=s))))
        for s in (1, 2, 3)
    }
    assert len(others | {tuple(first)}) > 1


def test_logit_bias_and_penalties_steer_the_choice(backend):
    prompt = backend.tokenizer.chat_tokens(QUESTION)
    forced = backend.tokenizer.tokenize(" banana")[-1]
    biased = ids(
        run(
            backend,
            prompt,
            max_tokens=3,
            sampling=SamplingParams(temperature=0.0, logit_bias=((forced, 100.0),)),
        )
    )
    assert biased == [forced] * 3
    repeat = ids(
        run(
            backend,
            prompt,
            max_tokens=6,
            sampling=SamplingParams(
                temperature=0.0, logit_bias=((forced, 8.0),), frequency_penalty=2.0
            ),
        )
    )
    assert repeat.count(forced) < 6  # the penalty grows with each use and wins


def test_bad_prompts_are_request_errors(backend):
    with pytest.raises(InvalidRequest):
        run(backend, [1, 2, backend.vocab_size + 5])
    with pytest.raises(ContextLengthExceeded):
        run(backend, [1] * backend.context_length)


def _prefill_seconds(backend, prompt) -> float:
    return _prefill(backend, prompt)[0]


def _prefill(backend, prompt) -> tuple[float, int]:
    """Seconds to the first token, and the prompt tokens that came from the KV cache."""
    start = time.perf_counter()
    _, cached = run_cached(backend, prompt, max_tokens=1)
    return time.perf_counter() - start, cached


def test_a_second_turn_reuses_the_first_turns_kv_cache(backend):
    system = {"role": "system", "content": "You answer questions about ships. " * 60}
    turn1 = [system, {"role": "user", "content": "What is a keel?"}]
    prompt1 = backend.tokenizer.chat_tokens(turn1)
    run(backend, [1, 2, 3], max_tokens=1)  # an unrelated sequence in the cache
    cold, reused = _prefill(backend, prompt1)
    assert reused <= 3
    reply = backend.tokenizer.decode(ids(run(backend, prompt1, max_tokens=8)))
    turn2 = [
        *turn1,
        {"role": "assistant", "content": reply},
        {"role": "user", "content": "And a hull?"},
    ]
    prompt2 = backend.tokenizer.chat_tokens(turn2)
    warm, reused = _prefill(backend, prompt2)
    assert reused >= len(prompt1) - 2
    assert len(prompt2) - reused < 40
    print(
        f"\nTTFT turn 1 ({len(prompt1)} tokens, cold): {cold * 1000:.0f} ms; "
        f"turn 2 ({len(prompt2)} tokens, {reused} reused): {warm * 1000:.0f} ms"
    )
    assert warm < cold / 2


def test_cancel_inside_a_long_prefill_returns_fast_and_leaves_the_cache_sound(backend):
    prompt = backend.tokenizer.tokenize("The quick brown fox jumps over the lazy dog. " * 150)[
        :1500
    ]
    run(backend, [5, 6, 7], max_tokens=1)  # nothing of `prompt` is cached
    full = _prefill_seconds(backend, prompt)
    expected = ids(run(backend, prompt, max_tokens=4))
    run(backend, [5, 6, 7], max_tokens=1)

    cancel = CancelToken()
    timer = threading.Timer(min(0.3, full / 4), cancel.cancel)
    timer.start()
    start = time.perf_counter()
    assert run(backend, prompt, cancel=cancel) == []
    cancelled = time.perf_counter() - start
    timer.cancel()
    assert cancelled < full / 2, (cancelled, full)
    assert len(backend._cached) < len(prompt)
    # What the aborted decode left behind is not trusted: the same prompt gives the same tokens.
    assert ids(run(backend, prompt, max_tokens=4)) == expected
