"""Engine limits by device: the CPU's as before, larger on GPUs, and what is set wins."""

from dvai_bridge.engine.limits import MiB, resolve_limits


def test_the_cpu_keeps_its_small_batches():
    limits = resolve_limits("cpu")
    assert (limits.max_batch, limits.prefill_chunk, limits.prompt_cache_bytes) == (
        8,
        512,
        1024 * MiB,
    )


def test_a_gpu_batches_more_and_reads_prompts_in_larger_chunks():
    cuda, metal = resolve_limits("cuda"), resolve_limits("metal")
    assert cuda.max_batch == 64 and cuda.prefill_chunk == 2048
    assert metal.max_batch == 32 and metal.prefill_chunk == 2048
    assert cuda.prompt_cache_bytes > resolve_limits("cpu").prompt_cache_bytes


def test_the_prompt_cache_takes_at_most_a_share_of_a_small_gpu():
    assert (
        resolve_limits("cuda", device_memory=16 << 30).prompt_cache_bytes
        == (16 << 30) // 10 // MiB * MiB
    )
    assert resolve_limits("cuda", device_memory=141 << 30).prompt_cache_bytes == 8192 * MiB


def test_what_the_user_sets_wins_and_zero_turns_the_cache_off():
    limits = resolve_limits("cuda", max_batch=3, prefill_chunk=256, prompt_cache_mb=0)
    assert (limits.max_batch, limits.prefill_chunk, limits.prompt_cache_bytes) == (3, 256, 0)
