"""Counters the engine keeps about itself (read by /metrics and /health)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class EngineMetrics:
    queue_depth: int = 0
    running: int = 0
    sequences_total: int = 0
    sequences_cancelled: int = 0
    sequences_failed: int = 0
    prompt_tokens_total: int = 0
    generated_tokens_total: int = 0
