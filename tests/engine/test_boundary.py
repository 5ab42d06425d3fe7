"""The engine's one exception boundary, and results a backend returns instead of side channels."""

from __future__ import annotations

from dvai_bridge.backends.fake import FakeBackend, FakeBatch
from dvai_bridge.core.types import BatchLimits, CancelToken, Prefilled
from dvai_bridge.engine.scheduler import Scheduler
from dvai_bridge.errors import BackendError, InvalidRequest
from tests.engine.test_scheduler import Collector, request


class RaisingBatch(FakeBatch):
    """Raises a library's exception (not a BridgeError) from step, or a BridgeError from add."""

    def __init__(self, backend, limits, where):
        super().__init__(backend, limits.prompt_cache_bytes)
        self.where = where

    def add(self, key, req):
        if self.where == "add":
            raise InvalidRequest("no room for this one", param="prompt")
        return super().add(key, req)

    def step(self):
        out = super().step()
        if self.where == "step":
            raise RuntimeError("the library broke")
        return out


class RaisingBackend(FakeBackend):
    def __init__(self, where):
        super().__init__()
        self.where = where

    def open_batch(self, limits):
        return RaisingBatch(self, limits, self.where)


def run_one(backend, limits):
    s = Scheduler(backend, limits=limits)
    sink = Collector()
    s.submit(request(backend, "hello"), sink, CancelToken())
    assert sink.done.wait(5)
    s.close()
    return s, sink.finished


def test_a_library_error_in_a_batch_step_ends_its_sequences_with_a_backend_error():
    s, finished = run_one(RaisingBackend("step"), BatchLimits(max_batch=2))
    assert finished.reason == "error"
    assert isinstance(finished.error, BackendError)
    assert "stepping the batch" in finished.error.message
    assert "the library broke" in finished.error.message
    assert s.failure is None  # a failed step is the sequences' error, not the engine's


def test_a_bridge_error_from_a_batch_passes_as_it_is():
    _, finished = run_one(RaisingBackend("add"), BatchLimits(max_batch=2))
    assert finished.reason == "error"
    assert isinstance(finished.error, InvalidRequest)
    assert finished.error.param == "prompt"


class CachingFake(FakeBackend):
    """A serial backend that says 5 prompt tokens came from its cache."""

    def generate(self, req, cancel):
        yield Prefilled(5)
        yield from super().generate(req, cancel)


def test_prefilled_is_reported_as_cached_tokens_on_the_serial_path():
    backend = CachingFake(batched=False)
    s, finished = run_one(backend, BatchLimits(max_batch=1))
    assert finished.reason == "stop" and finished.cached_tokens == 5
    assert s.metrics.prompt_cached_tokens_total == 5
