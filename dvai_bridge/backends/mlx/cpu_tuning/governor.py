"""BLAS threads that follow the load other processes put on the machine (Linux ``/proc``)."""

from __future__ import annotations

import logging
import os
import time

from ...cpu_cores import physical_cores
from .blas import blas_threads_fixed, can_set_threads, default_blas_threads, set_blas_threads

log = logging.getLogger(__name__)


def blas_threads_for(foreign_cores: float, physical: int) -> int:
    """BLAS threads to use when other processes keep ``foreign_cores`` cores busy.

    Measured on 2 cores (SmolLM2, fp32, OpenBLAS): idle, 2 threads decode +30-40% over 1
    (batch 1 and 8); with one core taken by another process, 2 threads lose 40-45%. So: every
    core while the others are (nearly) idle, else only the cores they leave free.
    """
    free = physical - foreign_cores
    if free >= physical - 0.3:
        return physical
    return max(1, min(physical - 1, int(free)))


def _busy_jiffies() -> tuple[int, int]:
    """(all CPUs' busy jiffies, this process's jiffies) from /proc."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    busy = sum(fields) - fields[3] - (fields[4] if len(fields) > 4 else 0)  # minus idle, iowait
    with open("/proc/self/stat") as f:
        own = f.read().rsplit(")", 1)[1].split()
    return busy, int(own[11]) + int(own[12])  # utime + stime


class BlasThreadGovernor:
    """Every ``period`` seconds, measure how much CPU other processes use and pick the BLAS
    thread count for it (``blas_threads_for``); a change needs the same answer twice in a row
    and is applied between steps, after MLX's queue has drained. Runs on the engine thread."""

    def __init__(self, threads: int, period: float = 1.0) -> None:
        self.threads = threads
        self.period = period
        self.physical = physical_cores()
        self._clk = os.sysconf("SC_CLK_TCK")
        self._last = (time.monotonic(), *_busy_jiffies())
        self._pending: int | None = None

    @classmethod
    def create(cls) -> BlasThreadGovernor | None:
        """A governor if the thread count may change here, else None."""
        if blas_threads_fixed() or not can_set_threads():
            return None  # fixed by the user, or no OpenBLAS in use (fast_blas is Linux-only)
        return cls(default_blas_threads())

    def tick(self) -> None:
        now = time.monotonic()
        t0, busy0, own0 = self._last
        if now - t0 < self.period:
            return
        busy, own = _busy_jiffies()
        self._last = (now, busy, own)
        foreign = max(0.0, (busy - busy0) - (own - own0)) / self._clk / (now - t0)
        want = blas_threads_for(foreign, self.physical)
        if want == self.threads:
            self._pending = None
            return
        if self._pending != want:
            self._pending = want
            return
        import mlx.core as mx

        mx.synchronize()  # no BLAS call may be running while OpenBLAS changes its pool
        if set_blas_threads(want):
            log.info(
                "BLAS threads %d -> %d (other processes use %.2f cores)",
                self.threads,
                want,
                foreign,
            )
            self.threads = want
        self._pending = None
