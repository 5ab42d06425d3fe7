"""Rank 0 tells the other ranks what to do, through the group itself.

Messages are lists of int32 words, sent the way mlx-lm's server shares requests: an
``all_sum`` to which rank 0 contributes the words and every other rank zeros. A message fits
one fixed-size collective (``HEAD`` words, the first being the length) unless it is long (a
prompt), then a second collective carries the rest.

Every collective runs on mlx-lm's generation stream, the stream the model's own collectives
(tensor-parallel sums, pipeline sends) and the token broadcast run on: one stream keeps them in
the same order on every rank, which is what lets a control message follow an asynchronously
evaluated decode step safely.

A collective that fails (the ring backend raises when a peer's socket closes) means the group
is gone: ``GroupLost``. It derives from ``BaseException`` on purpose: the engine treats an
``Exception`` from a batch step as one failed batch and goes on, but after a lost rank nothing
can run any more, so it must end the engine loop, which makes it the engine's failure state
(503s, ``/health`` says why).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, cast

import mlx.core as mx

from .group import GroupInfo

log = logging.getLogger(__name__)

HEAD = 64  # words per control collective; a step message is 1 word, an admission ~6 + prompt


class GroupLost(BaseException):  # a state, not an error of the tree
    """The distributed group cannot run any more (a rank died or the ranks fell out of step)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class Channel:
    def __init__(self, group: Any, info: GroupInfo) -> None:
        from mlx_lm.generate import generation_stream

        self.group = group
        self.info = info
        self.stream = generation_stream
        self.lost: str | None = None
        self.busy_since: float | None = None  # waiting on the group since (for a watchdog)
        self._pending: list[int] = []

    @contextmanager
    def busy(self) -> Iterator[None]:
        """Mark a stretch in which this rank waits on the others (nested: the outermost)."""
        outer = self.busy_since is None
        if outer:
            self.busy_since = time.monotonic()
        try:
            yield
        finally:
            if outer:
                self.busy_since = None

    # -- rank 0 ----------------------------------------------------------------------
    def queue(self, words: list[int]) -> None:
        """Words to go with the next message (admissions and removals ride with a step)."""
        self._pending.extend(words)

    def send(self, tail: list[int] = ()) -> None:  # type: ignore[assignment]
        """Rank 0: the queued words and ``tail``, to every other rank."""
        words, self._pending = [*self._pending, *tail], []
        head = [len(words), *words[: HEAD - 1]]
        self._collective(head + [0] * (HEAD - len(head)))
        if len(words) > HEAD - 1:
            self._collective(words[HEAD - 1 :])

    # -- other ranks -----------------------------------------------------------------
    def receive(self) -> list[int]:
        """Ranks > 0: the next message from rank 0 (blocks until it comes)."""
        head = self._collective([0] * HEAD)
        n = head[0]
        words = head[1 : 1 + min(n, HEAD - 1)]
        if n > HEAD - 1:
            words += self._collective([0] * (n - (HEAD - 1)))
        return words

    # -- both --------------------------------------------------------------------------
    def broadcast(self, values: mx.array) -> mx.array:
        """Rank 0's ``values`` on every rank (others pass zeros of the same shape). Lazy: it
        becomes part of the step's graph."""
        return mx.distributed.all_sum(values.astype(mx.int32), group=self.group, stream=self.stream)

    def _collective(self, words: list[int]) -> list[int]:
        if self.lost is not None:
            raise GroupLost(self.lost)
        try:
            with self.busy():
                out = mx.distributed.all_sum(
                    mx.array(words, dtype=mx.int32), group=self.group, stream=self.stream
                )
                return cast(list[int], out.tolist())  # a 1-d int32 array's list
        except Exception as exc:  # whatever the backend raised, the group is gone
            raise self.fail(exc) from exc

    def fail(self, cause: BaseException | str) -> GroupLost:
        """Mark the group lost (for good) and return the error that says so."""
        if self.lost is None:
            who = "rank 0" if self.info.rank else "another rank"
            self.lost = (
                f"The MLX distributed group ({self.info.backend}, {self.info.size} "
                f"ranks) stopped working: {who} is gone or out of step ({cause}). "
                "Restart the whole group."
            )
            log.critical("%s", self.lost)
        return GroupLost(self.lost)
