"""The MLX distributed group this process was launched into, if any.

``mlx.launch`` (ring, JACCL, NCCL) and ``mpirun`` start one process per rank and tell each,
through the environment, which rank it is and how to reach the others. We look at that
environment first and initialize ``mx.distributed`` only when it says we were launched, with
the backend it names and ``strict=True``, so a group that cannot form fails loudly instead of
quietly serving as one process.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from typing import Any

from ....errors import ConfigurationInvalid


@dataclass(frozen=True)
class GroupInfo:
    """Where this process stands in its group: shown by ``doctor`` and ``/health``."""

    size: int
    rank: int
    backend: str  # ring, jaccl, nccl, mpi
    shard: str = ""  # tensor or pipeline, once the model is loaded

    def describe(self) -> str:
        how = f", {self.shard} parallel" if self.shard else ""
        return f"{self.backend}, {self.size} ranks{how}, this is rank {self.rank}"

    def as_dict(self) -> dict[str, Any]:
        return {
            "size": self.size,
            "rank": self.rank,
            "backend": self.backend,
            "shard": self.shard or None,
        }


def launched_backend(env: dict[str, str] | None = None) -> str | None:
    """The distributed backend the environment says we were launched with (None: one process)."""
    env = dict(os.environ) if env is None else env
    if "OMPI_COMM_WORLD_SIZE" in env or "PMI_SIZE" in env:
        return "mpi"
    if "NCCL_HOST_IP" in env and "MLX_WORLD_SIZE" in env:
        return "nccl"
    if "MLX_JACCL_COORDINATOR" in env or "MLX_IBV_DEVICES" in env:
        return "jaccl"
    if "MLX_HOSTFILE" in env and "MLX_RANK" in env and _has_peers(env["MLX_HOSTFILE"]):
        return "ring"  # mlx.launch -n 1 writes an empty hostfile: one process
    return None


def _has_peers(hostfile: str) -> bool:
    try:
        with open(hostfile) as f:
            return bool(f.read().strip())
    except OSError:
        return True  # let mx.distributed.init say what is wrong with it


@functools.cache
def current() -> tuple[Any, GroupInfo] | None:
    """``(mx.distributed.Group, GroupInfo)`` when launched into a group of 2 or more, else
    None. Initialized once per process."""
    backend = launched_backend()
    if backend is None:
        return None
    import mlx.core as mx

    try:
        group = mx.distributed.init(strict=True, backend=backend)
    except Exception as exc:  # the launcher's environment is wrong
        raise ConfigurationInvalid(
            f"Launched for MLX's {backend} backend, but the group did not form: {exc}"
        ) from exc
    if group.size() < 2:
        return None
    return group, GroupInfo(group.size(), group.rank(), backend)
