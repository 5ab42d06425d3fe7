"""Continuous batching on the llama backend (backends/llama_cpp/batch.py), on the real SmolLM2
GGUF: batched greedy tokens equal the same sequence alone, a cached prefix gives the tokens an
uncached one gives, a seed repeats through the cache, a cancelled sequence's slot and KV are
free at once, and a full KV pool makes the newest sequence wait instead of failing.

Where two runs may part (sequences joining and leaving in another order put a sequence's KV
cells in another order in the shared pool, and llama.cpp's attention sums them in pool order),
the runs are compared token for token up to where they part, and there the two best candidates
of the first run must have been within ``NEAR_TIE`` of each other: a real fault (another
sequence's KV, a wrong position) parts at once and by far (docs/backends.md, "Fidelity").
"""

from __future__ import annotations

import pytest

from dvai_bridge.backends.llama_cpp.backend import LlamaBackend
from dvai_bridge.backends.registry import backend_load
from dvai_bridge.config import StartConfig
from dvai_bridge.core.types import BatchLimits, GenerationRequest, SamplingParams
from dvai_bridge.errors import ContextLengthExceeded, InvalidRequest
from dvai_bridge.progress import ProgressHub

GREEDY = SamplingParams(temperature=0.0)
N = 40
NEAR_TIE = 0.2  # logprob gap; measured partings on this model: 0.009-0.11
QUESTIONS = [
    "Write a long story about a lighthouse keeper.",
    "Explain how a steam engine works.",
    "Describe a busy market in a coastal town, with many details. " * 3,
    "Tell the history of the bicycle.",
    "Write a detailed recipe for bread.",
    "Describe the four seasons in a northern forest.",
]


def load(gguf_path: str, context: int) -> LlamaBackend:
    return LlamaBackend.load(
        backend_load(
            StartConfig(backend="llama", model_path=gguf_path, context_size=context), "llama"
        ),
        ProgressHub(),
    )


@pytest.fixture(scope="module")
def backend(gguf_path):
    b = load(gguf_path, 2048)
    yield b
    b.close()


@pytest.fixture()
def batch(backend):
    b = backend.open_batch(
        BatchLimits(max_batch=8, prefill_chunk=512, prompt_cache_bytes=256 << 20)
    )
    yield b
    b.close()


def prompt(backend, text: str) -> tuple[int, ...]:
    return tuple(backend.tokenizer.chat_tokens([{"role": "user", "content": text}]))


def drive(batch, items, *, stagger: int = 0, n: int = N, sampling=GREEDY, logprobs=True):
    """Run (key, prompt) items to ``n`` tokens each: all admitted at once, or one every
    ``stagger`` steps. Returns {key: [choice]} and {key: cached tokens}."""
    out = {k: [] for k, _ in items}
    cached = {}
    waiting, live, steps = list(items), set(), 0
    while waiting or live:
        if waiting and (not stagger or steps % stagger == 0):
            take = waiting if not stagger else waiting[:1]
            for key, tokens in take:
                cached[key] = batch.add(
                    key,
                    GenerationRequest(
                        tokens,
                        sampling,
                        max_tokens=n,
                        logprobs=logprobs,
                        top_logprobs=2 if logprobs else 0,
                    ),
                )
                live.add(key)
            waiting = waiting[len(take) :]
        for key, choice in batch.step():
            out[key].append(choice)
            if len(out[key]) >= n:
                batch.remove(key)
                live.discard(key)
        steps += 1
    return out, cached


def ids(choices) -> list[int]:
    return [c.token_id for c in choices]


def assert_same_or_near_tie(a, b) -> None:
    """Equal token for token, or parted where ``a``'s two best were within NEAR_TIE."""
    for j, (x, y) in enumerate(zip(a, b, strict=True)):
        if x.token_id != y.token_id:
            (_, lp1), (_, lp2) = x.top[:2]
            assert lp1 - lp2 < NEAR_TIE, (j, x.top, y.top)
            return


def test_batched_greedy_tokens_equal_each_sequence_alone(backend, batch):
    prompts = [prompt(backend, q) for q in QUESTIONS]
    alone = {}
    for key, p in enumerate(prompts):
        out, _ = drive(batch, [(key, p)])
        alone[key] = ids(out[key])
    batch.cache.clear()
    # without logprobs a greedy token is the argmax of the row, not the sampler chain's pick
    together, cached = drive(batch, list(enumerate(prompts)), logprobs=False)
    assert cached == dict.fromkeys(range(len(prompts)), 0)
    for key, tokens in alone.items():  # admitted in one step: KV in order, bit for bit
        assert ids(together[key]) == tokens, key
    assert len({tuple(v) for v in alone.values()}) == len(prompts)


def test_sequences_joining_and_leaving_part_only_at_near_ties(backend, batch):
    prompts = [prompt(backend, q) for q in QUESTIONS]
    alone = {k: drive(batch, [(k, p)])[0][k] for k, p in enumerate(prompts)}
    batch.cache.clear()
    forward, _ = drive(batch, list(enumerate(prompts)), stagger=7)
    backward, _ = drive(batch, list(reversed(list(enumerate(prompts)))), stagger=3)
    for key, choices in alone.items():
        assert_same_or_near_tie(choices, forward[key])
        assert_same_or_near_tie(choices, backward[key])


def test_a_cached_prefix_gives_the_uncached_tokens(backend, batch):
    system = {"role": "system", "content": "You answer questions about ships. " * 20}
    turn1 = [system, {"role": "user", "content": "What is a keel?"}]
    out, cached = drive(batch, [(0, tuple(backend.tokenizer.chat_tokens(turn1)))], n=12)
    assert cached[0] == 0
    turn2 = [
        *turn1,
        {"role": "assistant", "content": backend.tokenizer.decode(ids(out[0]))},
        {"role": "user", "content": "And a hull?"},
    ]
    p2 = tuple(backend.tokenizer.chat_tokens(turn2))
    warm, cached = drive(batch, [(1, p2)])
    assert cached[1] > len(p2) // 2  # turn 1 and most of its answer came from the cache
    batch.cache.clear()
    cold, cached = drive(batch, [(2, p2)])
    assert cached[2] == 0
    assert ids(warm[1]) == ids(cold[2])
    assert [c.logprob for c in warm[1]] == [c.logprob for c in cold[2]]


def test_a_seed_repeats_through_the_prompt_cache(backend, batch):
    p = prompt(backend, QUESTIONS[0])
    hot = SamplingParams(temperature=1.0, seed=7)
    first, cached1 = drive(batch, [(0, p)], sampling=hot)
    second, cached2 = drive(batch, [(1, p)], sampling=hot)
    assert cached1[0] == 0 and cached2[1] == len(p) - 1
    assert ids(first[0]) == ids(second[1])
    other, _ = drive(batch, [(2, p)], sampling=SamplingParams(temperature=1.0, seed=8))
    assert ids(other[2]) != ids(first[0])


def test_a_removed_sequence_frees_its_slot_and_kv_at_once(backend):
    import llama_cpp as lc

    batch = backend.open_batch(BatchLimits(max_batch=4, prefill_chunk=512, prompt_cache_bytes=0))
    try:
        p = prompt(backend, QUESTIONS[1])
        for key in range(4):
            batch.add(key, GenerationRequest(p, GREEDY, max_tokens=N))
        for _ in range(3):
            batch.step()
        slot = batch._seqs[2].slot
        assert lc.llama_memory_seq_pos_max(batch.mem, slot) >= len(p)
        batch.remove(2)
        assert lc.llama_memory_seq_pos_max(batch.mem, slot) == -1  # its cells are free
        batch.add(9, GenerationRequest(p, GREEDY, max_tokens=N))  # and so is its slot
        assert batch._seqs[9].slot == slot
        assert {k for k, _ in batch.step()} == {0, 1, 3, 9}  # 9 prefilled and sampled
    finally:
        batch.close()


def test_a_full_kv_pool_makes_the_newest_wait_and_all_finish(gguf_path):
    small = load(gguf_path, 256)
    batch = small.open_batch(BatchLimits(max_batch=4, prefill_chunk=512, prompt_cache_bytes=0))
    try:
        prompts = [prompt(small, q) for q in QUESTIONS[:4]]
        n = 256 // 4  # four prompts of ~40 tokens + 64 tokens each: more than 256 cells
        alone = {k: drive(batch, [(k, p)], n=n)[0][k] for k, p in enumerate(prompts)}
        assert batch.preempted == 0
        together, _ = drive(batch, list(enumerate(prompts)), n=n)
        assert batch.preempted > 0
        for key, choices in alone.items():
            assert len(together[key]) == n
            assert_same_or_near_tie(choices, together[key])
    finally:
        batch.close()
        small.close()


def test_bad_prompts_are_refused_before_they_take_a_slot(backend, batch):
    with pytest.raises(InvalidRequest):
        batch.add(0, GenerationRequest((1, 2, backend.vocab_size + 5), GREEDY))
    with pytest.raises(InvalidRequest):
        batch.add(0, GenerationRequest((), GREEDY))
    with pytest.raises(ContextLengthExceeded):
        batch.add(0, GenerationRequest((1,) * 2048, GREEDY))
    assert len(batch._free) == batch.n_seq
