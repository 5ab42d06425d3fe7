"""How many threads llama.cpp should use: the physical cores this process may run on.

``os.cpu_count()`` counts logical CPUs (SMT siblings included) of the whole machine; llama.cpp
decodes fastest with one thread per physical core, and llama-cpp-python's own default (half of
``cpu_count``) leaves half of a 2-core machine idle.
"""

from __future__ import annotations

import os
from pathlib import Path


def _allowed_cpus() -> set[int] | None:
    try:
        return set(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # macOS, Windows
        return None


def _cores_from_cpuinfo(text: str, allowed: set[int] | None) -> int:
    """Distinct (physical id, core id) pairs among the allowed processors of /proc/cpuinfo."""
    cores: set[tuple[str, str]] = set()
    for block in text.strip().split("\n\n"):
        fields: dict[str, str] = {}
        for line in block.splitlines():
            key, sep, value = line.partition(":")
            if sep:
                fields[key.strip()] = value.strip()
        if "processor" not in fields:
            continue
        if allowed is not None and int(fields["processor"]) not in allowed:
            continue
        cores.add((fields.get("physical id", "0"), fields.get("core id", fields["processor"])))
    return len(cores)


def physical_cores() -> int:
    """Physical cores available to this process; at least 1."""
    allowed = _allowed_cpus()
    try:
        import psutil  # type: ignore[import-untyped]

        physical = psutil.cpu_count(logical=False)
        logical = psutil.cpu_count(logical=True)
        if physical and logical:
            if allowed is not None and len(allowed) < logical:
                # Restricted affinity: scale by the machine's SMT ratio.
                return max(1, len(allowed) * physical // logical)
            return max(1, physical)
    except ImportError:
        pass
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        n = _cores_from_cpuinfo(cpuinfo.read_text(errors="replace"), allowed)
        if n:
            return n
    return max(1, len(allowed) if allowed is not None else (os.cpu_count() or 1))
