"""GET /metrics: Prometheus text, read from the engine's counters and the request tally."""

from __future__ import annotations

from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

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


Engines = Callable[[], list[tuple[dict[str, str], EngineMetrics]]]


def _family(
    kind: type,
    name: str,
    doc: str,
    engines: list[tuple[dict[str, str], Any]],
    value: Callable[[Any], float],
) -> Metric:
    """One family with a sample per engine (labelled by model when there are several)."""
    labels = list(engines[0][0]) if engines else []
    family = kind(name, doc, labels=labels)
    for tags, m in engines:
        family.add_metric([tags[k] for k in labels], value(m))
    return family


def _histogram(
    name: str, doc: str, engines: list[tuple[dict[str, str], Any]], pick: Callable[[Any], Histogram]
) -> HistogramMetricFamily:
    labels = list(engines[0][0]) if engines else []
    family = HistogramMetricFamily(name, doc, labels=labels)
    for tags, m in engines:
        h = pick(m)
        buckets = [("+Inf" if b == float("inf") else repr(b), n) for b, n in h.cumulative()]
        family.add_metric([tags[k] for k in labels], buckets, sum_value=h.sum)
    return family


class _Collector:
    def __init__(self, engines: Engines, requests: Counter[tuple[str, int]]) -> None:
        self.engines, self.requests = engines, requests

    def collect(self) -> Iterator[Metric]:
        engines = self.engines()
        req = CounterMetricFamily(
            P + "http_requests", "HTTP requests by route and status", labels=["route", "status"]
        )
        for (route, status), n in sorted(self.requests.items()):
            req.add_metric([route, str(status)], n)
        yield req
        yield _family(
            GaugeMetricFamily,
            P + "queue_depth",
            "Requests waiting for the engine",
            engines,
            lambda m: m.queue_depth,
        )
        yield _family(
            GaugeMetricFamily,
            P + "running_sequences",
            "Sequences being generated",
            engines,
            lambda m: m.running,
        )
        labels = list(engines[0][0]) if engines else []
        seqs = CounterMetricFamily(
            P + "sequences", "Sequences by outcome", labels=[*labels, "outcome"]
        )
        for tags, m in engines:
            values = [tags[k] for k in labels]
            seqs.add_metric([*values, "cancelled"], m.sequences_cancelled)
            seqs.add_metric([*values, "failed"], m.sequences_failed)
            seqs.add_metric([*values, "all"], m.sequences_total)
        yield seqs
        yield _family(
            CounterMetricFamily,
            P + "prompt_tokens",
            "Prompt tokens received",
            engines,
            lambda m: m.prompt_tokens_total,
        )
        yield _family(
            CounterMetricFamily,
            P + "generated_tokens",
            "Tokens generated",
            engines,
            lambda m: m.generated_tokens_total,
        )
        yield _family(
            CounterMetricFamily,
            P + "prompt_cache_hit_tokens",
            "Prompt tokens served from the prompt cache",
            engines,
            lambda m: m.prompt_cached_tokens_total,
        )
        yield _family(
            GaugeMetricFamily,
            P + "prompt_cache_bytes",
            "Bytes held by the prompt cache",
            engines,
            lambda m: m.prompt_cache_bytes,
        )
        yield _family(
            GaugeMetricFamily,
            P + "prompt_cache_entries",
            "Entries in the prompt cache",
            engines,
            lambda m: m.prompt_cache_entries,
        )
        yield _histogram(
            P + "time_to_first_token_seconds", "Time to first token", engines, lambda m: m.ttft
        )
        yield _histogram(
            P + "time_per_output_token_seconds",
            "Time between tokens",
            engines,
            lambda m: m.token_latency,
        )


def install_metrics(app: FastAPI, engines: Engines) -> None:
    """``engines``: the engines to report now, each with its labels (``{}`` for one)."""
    requests: Counter[tuple[str, int]] = Counter()
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector(engines, requests))  # type: ignore[arg-type]

    @app.middleware("http")
    async def count(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        response = await call_next(request)
        route = request.scope.get("route")
        requests[(getattr(route, "path", "unmatched"), response.status_code)] += 1
        return response

    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
