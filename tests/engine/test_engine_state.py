"""The engine as a state: a failure that escapes the loop, one thread for the device, queue
slots freed by cancellation, and fairness between requests."""

from __future__ import annotations

import threading

import pytest

from dvai_bridge.backends.fake import FakeBackend, FakeBatch
from dvai_bridge.core.types import BatchLimits, CancelToken
from dvai_bridge.engine.scheduler import Scheduler
from dvai_bridge.errors import BackendError, EngineFailed, ModelLoadFailed, ServerBusy
from tests.engine.test_scheduler import Collector, request
from tests.waiting import wait_until


class Died(BaseException):
    """What a dying backend throws: not an ``Exception``, so no per-step handler takes it."""


class LoopBreakingBatch(FakeBatch):
    """Raises inside the batch loop (outside step()) once a sequence has produced tokens."""

    def __init__(self, backend, prompt_cache_bytes, after):
        super().__init__(backend, prompt_cache_bytes)
        self.after, self.steps = after, 0

    def step(self):
        self.steps += 1
        return super().step()

    def cache_stats(self):
        if self.steps >= self.after:
            raise RuntimeError("cache bookkeeping broke")
        return super().cache_stats()


class DyingBackend(FakeBackend):
    """``mode``: 'loop' breaks the batch loop; 'decode' dies in the middle of a serial decode."""

    def __init__(self, mode, **kw):
        super().__init__(token_delay=0.002, batched=mode == "loop", **kw)
        self.mode = mode

    def open_batch(self, limits):
        return LoopBreakingBatch(self, limits.prompt_cache_bytes, after=5)

    def generate(self, req, cancel):
        for i, choice in enumerate(super().generate(req, cancel)):
            if self.mode == "decode" and i == 5:
                raise Died("the device went away mid-decode")
            yield choice


@pytest.mark.parametrize("mode", ["loop", "decode"])
def test_a_failure_that_escapes_the_loop_is_a_state_not_a_silent_death(mode):
    backend = DyingBackend(mode)
    s = Scheduler(backend, limits=BatchLimits(max_batch=2 if mode == "loop" else 1))
    running = [Collector() for _ in range(2)]
    queued = Collector()
    for sink in running:
        s.submit(request(backend, "x" * 40), sink, CancelToken())
    s.submit(request(backend, "y" * 40), queued, CancelToken())
    for sink in [*running, queued]:
        assert sink.done.wait(5), "a sequence never finished after the engine failed"
        assert sink.finished.reason == "error"
    # running: a 500 as any failed generation; never started: a 503 (serial runs one at a time)
    started = running if mode == "loop" else running[:1]
    assert all(isinstance(sink.finished.error, BackendError) for sink in started)
    assert all(
        isinstance(sink.finished.error, EngineFailed) for sink in [*running[len(started) :], queued]
    )
    why = s.health()
    assert why is not None and ("broke" in why or "went away" in why)
    with pytest.raises(EngineFailed) as info:
        s.submit(request(backend, "z"), Collector(), CancelToken())
    assert info.value.status_code == 503
    with pytest.raises(EngineFailed):
        s.call(lambda: 1)
    assert backend.closed  # the model was freed
    s.close()  # and closing a failed engine is fine


def test_a_healthy_engine_says_so_and_a_closed_one_says_why():
    s = Scheduler(FakeBackend(), limits=BatchLimits(max_batch=2))
    assert s.health() is None
    s.close()
    assert "shutting down" in s.health()


def test_the_backend_loads_and_runs_on_the_engine_thread():
    seen: dict[str, set] = {"load": set(), "decode": set(), "call": set()}

    class Recording(FakeBackend):
        def generate(self, req, cancel):
            seen["decode"].add(threading.get_ident())
            yield from super().generate(req, cancel)

    def load():
        seen["load"].add(threading.get_ident())
        return Recording(batched=False)

    s = Scheduler(load, limits=lambda backend: BatchLimits(max_batch=1))
    sink = Collector()
    s.submit(request(s.backend, "hi"), sink, CancelToken())
    assert sink.done.wait(5) and sink.text == "echo: hi"
    assert s.call(lambda: seen["call"].add(threading.get_ident())).result(5) is None
    s.close()
    assert len(seen["load"] | seen["decode"] | seen["call"]) == 1
    assert threading.get_ident() not in seen["load"]


def test_a_failed_load_raises_from_the_constructor():
    def load():
        raise ModelLoadFailed("no such model")

    with pytest.raises(ModelLoadFailed, match="no such model"):
        Scheduler(load)


def test_limits_may_depend_on_the_loaded_backend():
    s = Scheduler(
        lambda: FakeBackend(context_length=77),
        limits=lambda b: BatchLimits(max_batch=b.context_length // 10),
    )
    assert s.max_batch == 7
    s.close()


def test_a_device_call_runs_while_the_batch_is_full():
    backend = FakeBackend(token_delay=0.01)
    s = Scheduler(backend, limits=BatchLimits(max_batch=1))
    sink = Collector()
    s.submit(request(backend, "l" * 200), sink, CancelToken())
    wait_until(lambda: s.metrics.running == 1, "the sequence to run")
    assert s.call(lambda: "done").result(1) == "done"
    assert not sink.done.is_set()  # it ran between steps of the running sequence
    s.close()


def test_queued_sequences_whose_callers_left_free_their_slots_at_once():
    backend = FakeBackend(token_delay=0.01)
    s = Scheduler(backend, max_queued=4, limits=BatchLimits(max_batch=1))
    s.submit(request(backend, "r" * 200), Collector(), CancelToken())
    wait_until(lambda: s.metrics.running == 1 and s.queued == 0, "the first to run")
    tokens, sinks = [], []
    for _ in range(4):
        tokens.append(CancelToken())
        sinks.append(Collector())
        s.submit(request(backend, "q"), sinks[-1], tokens[-1])
    with pytest.raises(ServerBusy):
        s.submit(request(backend, "q"), Collector(), CancelToken())
    for token in tokens:
        token.cancel()
    assert s.queued == 0 and s.metrics.queue_depth == 0
    assert all(sink.finished is not None and sink.finished.reason == "cancelled" for sink in sinks)
    s.submit(request(backend, "q"), Collector(), CancelToken())  # a slot is free again
    s.close()


def test_sequences_are_handed_out_fairly_between_requests():
    backend = FakeBackend(token_delay=0.002)
    s = Scheduler(backend, limits=BatchLimits(max_batch=1))
    blocker = Collector()
    s.submit(request(backend, "b" * 30), blocker, CancelToken(), group="blocker")
    wait_until(lambda: s.metrics.running == 1, "the blocker to run")
    order: list[str] = []

    def sink_for(name):
        c = Collector()
        inner = c.__call__

        def call(event):
            inner(event)
            if c.finished is not None:
                order.append(name)

        return call, c

    many = [sink_for(f"big{i}") for i in range(6)]
    for call, _ in many:
        s.submit(request(backend, "m"), call, CancelToken(), group="big")
    late, late_c = sink_for("small")
    s.submit(request(backend, "s"), late, CancelToken(), group="small")
    assert late_c.done.wait(5) and all(c.done.wait(5) for _, c in many)
    # FIFO would run the small request last; round-robin runs it right after the first big one
    assert order.index("small") == 1, order
    s.close()
