"""CPU accounting the benchmarks share: busy CPU-seconds of the machine and of one process.

Each benchmark script's ``CpuWatch`` turns two readings into cores' worth of CPU used by the
server, by the client and by everything else (``foreign_cpu``, the main noise on a shared box).
"""

from __future__ import annotations

import os

_CLK = os.sysconf("SC_CLK_TCK")


def system_busy() -> float:
    """Busy CPU-seconds of the whole machine since boot (user+nice+system+irq+softirq+steal)."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return (v[0] + v[1] + v[2] + v[5] + v[6] + v[7]) / _CLK


def proc_cpu(pid: int) -> float:
    """CPU-seconds (all threads, user+system) used so far by ``pid``; 0 if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / _CLK
    except (OSError, IndexError, ValueError):
        return 0.0
