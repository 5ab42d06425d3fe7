"""How many physical cores this process may run on: the thread count both backends start from.

``os.cpu_count()`` counts logical CPUs (SMT siblings included) of the whole machine; llama.cpp
decodes fastest with one thread per physical core (llama-cpp-python's own default, half of
``cpu_count``, leaves half of a 2-core machine idle), and MLX's CPU BLAS likewise.

Why not ``psutil.cpu_count(logical=False)`` alone: it counts the cores of the whole machine,
not those this process may use. Under ``taskset``, a cgroup cpuset or a container's CPU list it
over-counts (measured on the 2-core test box: ``taskset -c 0`` -> psutil 2, this 1), and
threads beyond the allowed cores only wait. So on Linux the count is psutil's own method (the
kernel's ``topology/thread_siblings_list``: CPUs sharing a core list the same siblings) over
the allowed CPUs only. Where there is no affinity API (macOS, Windows) psutil's count is used
when psutil is installed, else ``os.cpu_count()``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

SYSFS_CPUS = Path("/sys/devices/system/cpu")


def _allowed_cpus() -> set[int] | None:
    try:
        return set(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # macOS, Windows
        return None


def count_cores(cpus: Iterable[int], sysfs: Path = SYSFS_CPUS) -> int:
    """Distinct cores among ``cpus``: CPUs whose sibling lists are equal share a core; a CPU
    without topology information counts as a core of its own."""
    cores = set()
    for cpu in cpus:
        try:
            cores.add(
                (sysfs / f"cpu{cpu}" / "topology" / "thread_siblings_list").read_text().strip()
            )
        except OSError:
            cores.add(f"cpu{cpu}")
    return len(cores)


def physical_cores() -> int:
    """Physical cores available to this process; at least 1."""
    allowed = _allowed_cpus()
    if allowed is not None:
        return max(1, count_cores(allowed))
    try:
        import psutil  # type: ignore[import-untyped]

        physical = psutil.cpu_count(logical=False)
    except ImportError:
        physical = None
    return max(1, physical or os.cpu_count() or 1)
