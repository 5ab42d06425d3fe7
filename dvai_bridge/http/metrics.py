"""GET /metrics: Prometheus text, read from the engine's counters and the request tally."""

from __future__ import annotations

from collections import Counter
from collections.abc import Awaitable, Callable, Iterator

from fastapi import FastAPI, Request, Response
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from ..engine.metrics import EngineMetrics, Histogram

P = "dvai_bridge_"


def _histogram(name: str, doc: str, h: Histogram) -> HistogramMetricFamily:
    buckets = [("+Inf" if b == float("inf") else repr(b), n) for b, n in h.cumulative()]
    return HistogramMetricFamily(name, doc, buckets=buckets, sum_value=h.sum)


class _Collector:
    def __init__(self, engine: EngineMetrics, requests: Counter[tuple[str, int]]) -> None:
        self.engine, self.requests = engine, requests

    def collect(self) -> Iterator[Metric]:
        m = self.engine
        req = CounterMetricFamily(P + "http_requests", "HTTP requests by route and status",
                                  labels=["route", "status"])
        for (route, status), n in sorted(self.requests.items()):
            req.add_metric([route, str(status)], n)
        yield req
        yield GaugeMetricFamily(P + "queue_depth", "Requests waiting for the engine",
                                value=m.queue_depth)
        yield GaugeMetricFamily(P + "running_sequences", "Sequences being generated",
                                value=m.running)
        seqs = CounterMetricFamily(P + "sequences", "Sequences by outcome", labels=["outcome"])
        seqs.add_metric(["cancelled"], m.sequences_cancelled)
        seqs.add_metric(["failed"], m.sequences_failed)
        seqs.add_metric(["all"], m.sequences_total)
        yield seqs
        yield CounterMetricFamily(P + "prompt_tokens", "Prompt tokens received",
                                  value=m.prompt_tokens_total)
        yield CounterMetricFamily(P + "generated_tokens", "Tokens generated",
                                  value=m.generated_tokens_total)
        yield CounterMetricFamily(P + "prompt_cache_hit_tokens",
                                  "Prompt tokens served from the prompt cache",
                                  value=m.prompt_cached_tokens_total)
        yield GaugeMetricFamily(P + "prompt_cache_bytes", "Bytes held by the prompt cache",
                                value=m.prompt_cache_bytes)
        yield GaugeMetricFamily(P + "prompt_cache_entries", "Entries in the prompt cache",
                                value=m.prompt_cache_entries)
        yield _histogram(P + "time_to_first_token_seconds", "Time to first token", m.ttft)
        yield _histogram(P + "time_per_output_token_seconds", "Time between tokens",
                         m.token_latency)


def install_metrics(app: FastAPI, engine: EngineMetrics) -> None:
    requests: Counter[tuple[str, int]] = Counter()
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector(engine, requests))  # type: ignore[arg-type]

    @app.middleware("http")
    async def count(request: Request,
                    call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        response = await call_next(request)
        route = request.scope.get("route")
        requests[(getattr(route, "path", "unmatched"), response.status_code)] += 1
        return response

    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
