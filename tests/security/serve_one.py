"""Child process of tests/security/real_engine.py: serve one StartConfig until SIGTERM.

    python -m tests.security.serve_one '{"backend": "mlx", "http_base_port": 0}'

Prints ``READY <base_url> <model_id>`` once it serves, ``STOPPED`` after a clean stop.
"""

from __future__ import annotations

import json
import signal
import sys
import threading

from dvai_bridge import Bridge, StartConfig
from dvai_bridge.backends.fake import FakeBackend
from dvai_bridge.backends.registry import register_backend


class VocabFake(FakeBackend):
    """The fake with a vocabulary size, as real backends have: token ids get checked."""

    vocab_size = 259


def main() -> None:
    config = StartConfig(**json.loads(sys.argv[1]))
    register_backend(
        "catalog-fake",
        lambda c, p: VocabFake(context_length=c.context_size or 4096, token_delay=0.002),
    )
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    bridge = Bridge()
    server = bridge.start_blocking(config)
    print("READY", server.base_url, server.model_id, flush=True)
    while not stop.wait(0.2):
        pass
    bridge.stop()
    print("STOPPED", flush=True)


if __name__ == "__main__":
    main()
