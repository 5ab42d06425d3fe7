"""The engine's loops on the fake backend: admission, retirement, cancellation, caching."""

from __future__ import annotations

import threading
import time

import pytest

from dvai_bridge.backends.fake import FakeBackend
from dvai_bridge.core.types import (
    BatchLimits,
    CancelToken,
    Finished,
    GenerationRequest,
    TextDelta,
)
from dvai_bridge.engine.scheduler import Scheduler
from dvai_bridge.errors import ServerBusy
from tests.waiting import wait_until


class Collector:
    def __init__(self):
        self.text = ""
        self.finished: Finished | None = None
        self.done = threading.Event()

    def __call__(self, event):
        if isinstance(event, TextDelta):
            self.text += event.text
        else:
            self.finished = event
            self.done.set()


def request(backend: FakeBackend, text: str, **kw) -> GenerationRequest:
    return GenerationRequest(
        tuple(backend.tokenizer.tokenize(text)), max_tokens=kw.pop("max_tokens", 500), **kw
    )


@pytest.mark.parametrize("batched", [True, False], ids=["batched", "serial"])
def test_every_sequence_gets_its_own_answer(batched):
    backend = FakeBackend(batched=batched, token_delay=0.001)
    s = Scheduler(backend, limits=BatchLimits(max_batch=4))
    sinks = [Collector() for _ in range(10)]
    for i, sink in enumerate(sinks):
        s.submit(request(backend, f"q{i}"), sink, CancelToken())
    for i, sink in enumerate(sinks):
        assert sink.done.wait(10)
        assert sink.text == f"echo: q{i}" and sink.finished.reason == "stop"
    s.close()
    assert backend.closed


def test_batch_runs_sequences_together_up_to_the_limit():
    backend = FakeBackend(token_delay=0.002)
    s = Scheduler(backend, limits=BatchLimits(max_batch=3))
    peak = 0
    sinks = [Collector() for _ in range(6)]
    for sink in sinks:
        s.submit(request(backend, "x" * 40), sink, CancelToken())
    while not all(k.done.is_set() for k in sinks):
        peak = max(peak, s.metrics.running)
        time.sleep(0.001)  # sampling the running count (the peak is what is tested)
    assert peak == 3
    assert s.metrics.running == 0
    s.close()


def test_cancelling_frees_the_slot_at_once_and_others_continue():
    backend = FakeBackend(token_delay=0.01)
    s = Scheduler(backend, limits=BatchLimits(max_batch=1))
    long, short = Collector(), Collector()
    cancel = CancelToken()
    s.submit(request(backend, "y" * 1000), long, cancel)
    s.submit(request(backend, "short"), short, CancelToken())
    wait_until(lambda: long.text, "the long sequence to run")
    cancel.cancel()
    assert long.done.wait(2) and long.finished.reason == "cancelled"
    assert short.done.wait(2) and short.text == "echo: short"
    assert s.metrics.sequences_cancelled == 1
    s.close()


def test_second_turn_reports_cached_prompt_tokens():
    backend = FakeBackend()
    s = Scheduler(backend)
    first, second = Collector(), Collector()
    s.submit(request(backend, "a conversation"), first, CancelToken())
    assert first.done.wait(5) and first.finished.cached_tokens == 0
    s.submit(request(backend, "a conversation goes on"), second, CancelToken())
    assert second.done.wait(5)
    a, b = (
        backend.tokenizer.tokenize("a conversation"),
        backend.tokenizer.tokenize("a conversation goes on"),
    )
    shared = next(
        i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y
    )  # BOS + the common text
    assert shared == 1 + len("a conversation")
    assert second.finished.cached_tokens == shared
    assert s.metrics.prompt_cache_entries >= 1
    s.close()


def test_a_full_queue_raises_server_busy():
    backend = FakeBackend(token_delay=0.05)
    s = Scheduler(backend, max_queued=1, limits=BatchLimits(max_batch=1))
    s.submit(request(backend, "z" * 50), Collector(), CancelToken())
    wait_until(lambda: s.metrics.running == 1 and s.queued == 0, "the first to run")
    s.submit(request(backend, "z"), Collector(), CancelToken())
    with pytest.raises(ServerBusy):
        s.submit(request(backend, "z"), Collector(), CancelToken())
    s.close()


def test_close_cancels_queued_work_and_frees_the_backend():
    backend = FakeBackend(token_delay=0.01)
    s = Scheduler(backend, limits=BatchLimits(max_batch=1))
    running, queued = Collector(), Collector()
    cancel = CancelToken()
    s.submit(request(backend, "r" * 30), running, cancel)
    s.submit(request(backend, "q"), queued, CancelToken())
    wait_until(lambda: s.metrics.running == 1, "the first to run")
    s.close()
    assert queued.finished.reason == "cancelled"
    assert running.done.is_set()
    assert backend.closed


@pytest.mark.parametrize("max_batch", [1, 8], ids=["serial", "batched"])
def test_an_idle_engine_calls_the_backends_idle_hook_and_still_serves(monkeypatch, max_batch):
    from dvai_bridge.engine import scheduler

    monkeypatch.setattr(scheduler, "IDLE_TICK_S", 0.02)
    backend = FakeBackend()
    ticks = []
    backend.on_idle = lambda: ticks.append(threading.current_thread().name)
    s = Scheduler(backend, limits=BatchLimits(max_batch=max_batch))
    try:
        wait_until(lambda: len(ticks) >= 3, "three idle ticks")
        assert set(ticks) == {"dvai-engine"}  # the device's own thread
        failed = threading.Event()

        def failing() -> None:  # a failing hook is logged, not fatal
            failed.set()
            raise ZeroDivisionError

        backend.on_idle = failing
        assert failed.wait(5)
        done = Collector()
        s.submit(request(backend, "hello"), done, CancelToken())
        assert done.done.wait(10) and done.finished.reason in ("stop", "length")
    finally:
        s.close()


@pytest.mark.parametrize(("window", "together"), [(0.3, True), (0.0, False)])
def test_requests_arriving_together_after_idle_start_as_one_batch(monkeypatch, window, together):
    """Woken from idle, the engine waits ADMIT_WINDOW_S for more arrivals, so requests sent
    together are prefilled together instead of the first one alone."""
    from dvai_bridge.engine import scheduler

    monkeypatch.setattr(scheduler, "ADMIT_WINDOW_S", window)
    backend = FakeBackend(token_delay=0.001)
    first_step: list[int] = []
    open_batch = backend.open_batch

    def recording(limits):
        batch = open_batch(limits)
        step = batch.step

        def counted():
            if not first_step:
                first_step.append(len(batch._seqs))
            return step()

        batch.step = counted
        return batch

    backend.open_batch = recording
    s = Scheduler(backend, limits=BatchLimits(max_batch=8))
    try:
        time.sleep(0.05)  # the engine goes idle (the state under test; nothing reports it)
        sinks = [Collector(), Collector()]
        s.submit(request(backend, "a"), sinks[0], CancelToken())
        time.sleep(0.1)  # under test: the second arrives 0.1 s later, within or past the window
        s.submit(request(backend, "b"), sinks[1], CancelToken())
        assert all(k.done.wait(10) for k in sinks)
    finally:
        s.close()
    assert first_step == ([2] if together else [1])
