"""Every rank runs the same batch steps: rank 0 leads, the others follow.

Rank 0 runs the engine (scheduler, HTTP) over a ``LeaderBatch``. Each admission and removal it
makes is queued as words on the ``Channel`` and sent with the next step, so every other rank
(``follow``) applies the same admissions and removals, in the same order, to its own
``MLXBatch`` before running the same step: the same MLX ops, the same collectives, in the same
order on every rank.

The token each sequence continues with is rank 0's: every rank's sampler ends in a broadcast of
rank 0's choice (others contribute zeros). So sampling, seeds, penalties and grammars live on
rank 0 alone, and the ranks cannot drift apart even where their logits differ in the last bit.

The prompt cache of every rank must hit and miss alike, so it measures an entry the same way on
every rank (its largest layer times the model's layer count), and each admission carries the
number of cached tokens rank 0 used: a follower that finds another number stops the group.

Message words: ``OPEN max_batch prefill_chunk cache_mib``, ``ADD key max_tokens own_sampler
cached n tok*n``, ``REMOVE key``, ``STEP``, ``STOP``. An empty message is a heartbeat.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Generator
from typing import Any

import mlx.core as mx
from mlx_lm.sample_utils import greedy_sampler

from ....core.backend import Step
from ....core.prompt_cache import PromptCache
from ....core.types import (
    BatchLimits,
    CancelToken,
    GenerationRequest,
    SamplingParams,
    TokenChoice,
)
from ....errors import BackendError, ConfigurationInvalid
from ..backend import MLXBackend
from ..batch import KV, MLXBatch, MLXCacheOps
from ..options import GROUP_TIMEOUT_S
from ..sampling import LogitsProcessor, Sampler
from .channel import Channel, GroupLost
from .group import GroupInfo
from .links import RingLinks

log = logging.getLogger(__name__)

OPEN, ADD, REMOVE, STEP, STOP = 1, 2, 3, 4, 5
MIB = 1 << 20
LINK_CHECK_S = 0.5  # how often the watchdog looks, while this rank waits on the group


class GroupCacheOps(MLXCacheOps):
    """Sizes that agree on every rank, whatever part of the model each holds."""

    def __init__(self, layers: int) -> None:
        self.layers = layers

    def nbytes(self, snapshot: KV) -> int:
        return max((c.nbytes for c in snapshot), default=0) * self.layers


class _GroupBatch(MLXBatch):
    def __init__(self, backend: GroupBackend, limits: BatchLimits) -> None:
        tuning = backend.cpu_tuning
        super().__init__(
            backend.model,
            tick=tuning.tick if tuning is not None else None,
            max_batch=limits.max_batch,
            prefill_step=limits.prefill_chunk,
            prompt_cache_bytes=limits.prompt_cache_bytes,
        )
        self.channel = backend.channel
        # Whole MiB, as sent to the other ranks: every rank evicts at the same size.
        self.cache = PromptCache(
            GroupCacheOps(backend.total_layers), max_bytes=limits.prompt_cache_bytes // MIB * MIB
        )


class LeaderBatch(_GroupBatch):
    """Rank 0's batch: an ``MLXBatch`` whose every change is sent to the other ranks."""

    def __init__(self, backend: GroupBackend, limits: BatchLimits) -> None:
        super().__init__(backend, limits)
        self._errors: list[BaseException] = []
        self._shared_greedy = self._broadcasting(greedy_sampler)
        self.channel.queue(
            [OPEN, limits.max_batch, limits.prefill_chunk, limits.prompt_cache_bytes // MIB]
        )

    def add(self, key: int, request: GenerationRequest) -> int:
        cached = super().add(key, request)
        own = int(not request.sampling.greedy)
        tokens = list(request.prompt_tokens)
        self.channel.queue([ADD, key, request.max_tokens, own, cached, len(tokens), *tokens])
        return cached

    def remove(self, key: int) -> None:
        super().remove(key)
        self.channel.queue([REMOVE, key])

    def step(self) -> list[tuple[int, TokenChoice]]:
        try:
            with self.channel.busy():
                self.channel.send([STEP])
                out = super().step()
        except Exception as exc:  # the ranks may no longer be in step
            raise self.channel.fail(exc) from exc
        if self._errors:  # a sampler or logits processor failed; the step itself went on
            error, self._errors = self._errors[0], []
            raise BackendError(f"Sampling failed: {error}") from error
        return out

    # Rank 0 alone samples; whatever it draws, every rank continues with it. A failure in
    # rank 0's sampling code must not skip the broadcast (the others wait for it), so it is
    # caught, remembered and raised after the step.
    def _sampler(self, key: int, request: GenerationRequest) -> Sampler:
        if request.sampling.greedy:
            return self._shared_greedy  # one object: greedy rows sample in one call
        return self._broadcasting(super()._sampler(key, request))

    def _processors(self, key: int, request: GenerationRequest) -> list[LogitsProcessor]:
        return [self._guarded(p) for p in super()._processors(key, request)]

    def _broadcasting(self, sampler: Sampler) -> Sampler:
        def sample(logprobs: mx.array) -> mx.array:
            try:
                tokens = sampler(logprobs)
            except Exception as exc:
                self._errors.append(exc)
                tokens = mx.zeros(logprobs.shape[:-1], dtype=mx.int32)
            return self.channel.broadcast(tokens)

        return sample

    def _guarded(self, processor: LogitsProcessor) -> LogitsProcessor:
        def process(tokens: mx.array, logits: mx.array) -> mx.array:
            try:
                return processor(tokens, logits)
            except Exception as exc:
                self._errors.append(exc)
                return logits

        return process


class FollowerBatch(_GroupBatch):
    """Another rank's batch: the same sequences, each continuing with rank 0's tokens."""

    def __init__(self, backend: GroupBackend, limits: BatchLimits) -> None:
        super().__init__(backend, limits)
        self._shared = self._follow()

    def _follow(self) -> Sampler:
        return lambda logprobs: self.channel.broadcast(
            mx.zeros(logprobs.shape[:-1], dtype=mx.int32)
        )

    def _sampler(self, key: int, request: GenerationRequest) -> Sampler:
        # Same object structure as rank 0 (shared for greedy), so the batch takes the same
        # path (one batched call, or one call per row) and issues the same collectives.
        return self._shared if request.sampling.greedy else self._follow()

    def _processors(self, key: int, request: GenerationRequest) -> list[LogitsProcessor]:
        return []


class GroupBackend(MLXBackend):
    """An ``MLXBackend`` over this rank's shard; on rank 0, its batches lead the group."""

    def __init__(
        self,
        *args: Any,
        group: Any,
        info: GroupInfo,
        total_layers: int,
        stall_timeout: float = GROUP_TIMEOUT_S,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.channel = Channel(group, info)
        self.group_info = info
        self.total_layers = total_layers
        self.stall_timeout = stall_timeout
        self._closed = threading.Event()

    def watch(self, on_stall: Callable[[GroupLost], None]) -> None:
        """Call ``on_stall`` (once, from a watchdog thread) if this rank waits on the group
        longer than ``stall_timeout`` seconds: a peer that hangs, or a machine that vanished
        without closing its connections, blocks a collective for good, and nothing can
        interrupt it. On the ring backend it also ends at once when a ring connection closes
        (``links``), since MLX may then wait forever instead of raising."""
        links = RingLinks.from_env(self.group_info.backend)

        def run() -> None:
            period = min(LINK_CHECK_S, self.stall_timeout / 4)
            while not self._closed.wait(period):
                since = self.channel.busy_since
                if since is None:
                    continue
                # Waiting on the group: a closed ring connection means the wait never ends.
                why = links.lost() if links is not None else None
                if why is None and time.monotonic() - since > self.stall_timeout:
                    why = f"no answer from the group for {self.stall_timeout:g} s"
                if why is not None:
                    on_stall(self.channel.fail(why))
                    return

        threading.Thread(target=run, name="dvai-group-watchdog", daemon=True).start()

    def open_batch(self, limits: BatchLimits) -> LeaderBatch:
        if limits.max_batch < 2:
            raise ConfigurationInvalid(
                "Distributed serving needs max_batch_size >= 2.", param="max_batch_size"
            )
        return LeaderBatch(self, limits)

    def generate(self, request: GenerationRequest, cancel: CancelToken) -> Generator[Step]:
        raise BackendError(
            "Distributed serving runs sequences in a batch only "
            "(max_batch_size must be at least 2)."
        )

    def on_idle(self) -> None:
        super().on_idle()
        self.channel.send()  # heartbeat: a rank that died is noticed while idle too

    def close(self) -> None:
        self._closed.set()
        if self.group_info.rank == 0 and self.channel.lost is None:
            try:
                self.channel.send([STOP])
            except GroupLost:
                pass
        super().close()


def follow(backend: GroupBackend) -> int:
    """Ranks > 0: run rank 0's steps until it says stop (0) or the group is lost (1)."""
    channel = backend.channel
    backend.watch(_exit_stalled)  # stuck in a collective: only leaving ends it
    batch: FollowerBatch | None = None
    try:
        while True:
            words = channel.receive()
            i = 0
            while i < len(words):
                op = words[i]
                if op == STEP:
                    assert batch is not None
                    with channel.busy():
                        batch.step()
                    i += 1
                elif op == ADD:
                    assert batch is not None
                    i = _add(batch, words, i)
                elif op == REMOVE:
                    assert batch is not None
                    batch.remove(words[i + 1])
                    i += 2
                elif op == OPEN:
                    limits = BatchLimits(words[i + 1], words[i + 2], words[i + 3] * MIB)
                    batch = FollowerBatch(backend, limits)
                    i += 4
                elif op == STOP:
                    log.info("rank 0 stopped the group")
                    return 0
                else:
                    raise channel.fail(f"unknown message word {op}")
    except GroupLost:
        return 1
    except Exception as exc:  # out of step with rank 0: end the group
        log.exception("rank %d failed", channel.info.rank)
        channel.fail(exc)
        return 1
    finally:
        if batch is not None:
            batch.close()
        backend.close()


def _exit_stalled(error: GroupLost) -> None:
    log.critical("exiting: %s", error.message)
    logging.shutdown()
    os._exit(1)


def _add(batch: FollowerBatch, words: list[int], i: int) -> int:
    key, max_tokens, own, cached, n = words[i + 1 : i + 6]
    tokens = tuple(words[i + 6 : i + 6 + n])
    request = GenerationRequest(
        tokens, SamplingParams(temperature=1.0 if own else 0.0), max_tokens=max_tokens
    )
    got = batch.add(key, request)
    if got != cached:
        raise RuntimeError(
            f"prompt caches disagree: rank 0 reused {cached} tokens, this rank {got}"
        )
    return i + 6 + n
