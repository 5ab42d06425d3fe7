"""One model served by an MLX distributed group: rank 0 speaks HTTP, every rank computes.

``group.current()`` finds the group ``mlx.launch`` (or ``mpirun``) started us in;
``sharded.load_sharded`` loads this rank's part of the model (tensor parallel or pipeline,
through mlx-lm); ``mirror`` keeps every rank running the same batch steps. See
docs/distributed.md.
"""

from __future__ import annotations

import logging
import signal
from typing import TYPE_CHECKING

from ....config import StartConfig
from ....progress import ProgressHub
from .group import GroupInfo, current, launched_backend

if TYPE_CHECKING:  # mlx is imported only when a group is found
    from .mirror import GroupBackend

__all__ = ["GroupInfo", "current", "launched_backend", "load", "run_follower"]

log = logging.getLogger(__name__)


def load(config: StartConfig, progress: ProgressHub) -> GroupBackend:
    """This rank's ``GroupBackend`` (call ``current()`` first: it must say we are in one)."""
    from ...registry import backend_load
    from ..options import MLXOptions
    from .sharded import load_sharded

    found = current()
    assert found is not None
    group, info = found
    spec = backend_load(config, "mlx")
    assert isinstance(spec.options, MLXOptions)
    return load_sharded(
        spec.model_path,
        context_size=spec.context_size,
        progress=progress,
        group=group,
        info=info,
        shard=spec.options.shard,
        stall_timeout=spec.options.group_timeout_s,
    )


def run_follower(config: StartConfig, progress: ProgressHub) -> int:
    """Ranks > 0: load this rank's part, then run rank 0's steps until it stops the group.
    Returns the exit status: 0 when rank 0 stopped it, 1 when the group was lost.

    Ctrl-C reaches every rank of a terminal's launch: the others ignore it and stop when
    rank 0 (which drains first) tells them to. SIGTERM (the launcher ending the group) ends a
    follower at once."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    backend = load(config, progress)
    from .mirror import follow

    log.info("rank %d ready; following rank 0", backend.group_info.rank)
    return follow(backend)
