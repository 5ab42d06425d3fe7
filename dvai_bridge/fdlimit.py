"""Keep the user's open-file limit when mlx_lm is imported.

``mlx_lm.utils`` runs ``resource.setrlimit(RLIMIT_NOFILE, (2048, 4096))`` at import: it lowers
a higher soft limit to 2048 and the hard limit to 4096 (for good, unless the process is root),
and under a hard limit below 4096 the import fails ("not allowed to raise maximum limit"). A
server that lost its descriptors to a few thousand connections then could not even accept one.

``keep_file_limit()`` wraps code that may import mlx_lm for the first time (the MLX backend's
load): inside it a call that sets RLIMIT_NOFILE may only raise the soft limit, up to the hard
limit it found; the hard limit never changes::

    with keep_file_limit():
        import mlx_lm
"""

from __future__ import annotations

import contextlib
import logging
import resource
import threading
from collections.abc import Iterator

log = logging.getLogger(__name__)

_lock = threading.Lock()


def _lower(a: int, b: int) -> int:
    inf = resource.RLIM_INFINITY
    return b if a == inf else a if b == inf else min(a, b)


@contextlib.contextmanager
def keep_file_limit() -> Iterator[None]:
    """Within: RLIMIT_NOFILE changes only raise the soft limit; afterwards at least as before."""
    nofile, inf = resource.RLIMIT_NOFILE, resource.RLIM_INFINITY
    with _lock:
        soft, hard = resource.getrlimit(nofile)
        original = resource.setrlimit

        def raise_only(which: int, limits: tuple[int, int]) -> None:
            if which != nofile:
                return original(which, limits)
            now_soft, now_hard = resource.getrlimit(nofile)
            wanted = _lower(limits[0], now_hard)
            if now_soft == inf or (wanted != inf and wanted <= now_soft):
                return None
            original(nofile, (wanted, now_hard))

        resource.setrlimit = raise_only
    try:
        yield
    finally:
        with _lock:
            resource.setrlimit = original
            now_soft, now_hard = resource.getrlimit(nofile)
            if _lower(now_soft, soft) != soft or _lower(now_hard, hard) != hard:
                try:  # something went around us: put back what we found
                    original(nofile, (soft, hard))
                except (ValueError, OSError) as exc:
                    log.warning(
                        "could not restore the open-file limit (%d, %d): %s", soft, hard, exc
                    )
