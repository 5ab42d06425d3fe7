"""Counters the engine keeps about itself (read by /metrics and /health).

Plain numbers, written by the engine thread only; readers may see a value a step old.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
TOKEN_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


@dataclass
class Histogram:
    buckets: tuple[float, ...]
    counts: list[int] = field(default_factory=list)
    sum: float = 0.0
    count: int = 0

    def __post_init__(self) -> None:
        self.counts = [0] * (len(self.buckets) + 1)

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.sum += value
        self.count += 1

    def cumulative(self) -> list[tuple[float, int]]:
        """(upper bound, cumulative count) pairs, ending with +Inf."""
        out, total = [], 0
        for bound, n in zip((*self.buckets, float("inf")), self.counts, strict=True):
            total += n
            out.append((bound, total))
        return out


@dataclass
class EngineMetrics:
    queue_depth: int = 0
    running: int = 0
    sequences_total: int = 0
    sequences_cancelled: int = 0
    sequences_failed: int = 0
    prompt_tokens_total: int = 0
    prompt_cached_tokens_total: int = 0
    generated_tokens_total: int = 0
    prompt_cache_bytes: int = 0
    prompt_cache_entries: int = 0
    ttft: Histogram = field(default_factory=lambda: Histogram(TTFT_BUCKETS))
    token_latency: Histogram = field(default_factory=lambda: Histogram(TOKEN_BUCKETS))

    def observe_ttft(self, seconds: float) -> None:
        self.ttft.observe(seconds)

    def observe_token_latency(self, seconds: float) -> None:
        self.token_latency.observe(seconds)
