"""A real browser (Debian's headless Chromium) against the real server (fake backend): a page on
another local origin cannot read the bridge's answers by default, can with ``--cors-origin``
for its origin, and a page on a loopback origin can (issue 13 item 7).

The page fetches a completion and ``/metrics`` from the bridge and posts what it could read
back to its own server (same origin), which the test reads. Skipped when Chromium is absent
(``scripts/setup.sh --dev`` installs Debian's ``chromium``).
"""

from __future__ import annotations

import os
import queue
import shutil
import signal
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from dvai_bridge import Bridge, StartConfig

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None,
    reason="Chromium is not installed (scripts/setup.sh --dev installs Debian's chromium)",
)

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
]

PAGE = """<!doctype html><title>another origin</title><script>
const bridge = "%(bridge)s";
const report = (what, text) => fetch("/result", {method: "POST", body: what + " " + text});
fetch(bridge + "/v1/chat/completions", {
  method: "POST", headers: {"Content-Type": "application/json"},
  body: JSON.stringify({messages: [{role: "user", content: "from the page"}]}),
}).then(r => r.json()).then(j => report("chat", "read:" + j.choices[0].message.content))
  .catch(e => report("chat", "blocked:" + e));
fetch(bridge + "/metrics").then(r => r.text())
  .then(t => report("metrics", "read:" + t.length + " bytes"))
  .catch(e => report("metrics", "blocked:" + e));
</script>"""


class _PageServer(ThreadingHTTPServer):
    """Serves the page at / and takes what it reports at POST /result."""

    daemon_threads = True

    def __init__(self, host: str) -> None:
        self.page = b""
        self.results: queue.Queue[str] = queue.Queue()
        super().__init__((host, 0), _Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def port(self) -> int:
        return self.server_address[1]

    def close(self) -> None:
        self.shutdown()
        self.server_close()


class _Handler(BaseHTTPRequestHandler):
    server: _PageServer

    def do_GET(self) -> None:
        body = self.server.page if self.path == "/" else b""
        self.send_response(200 if body else 404)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:
        size = int(self.headers.get("Content-Length", 0))
        self.server.results.put(self.rfile.read(size).decode())
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@contextmanager
def _bridge(**options: object) -> Iterator[str]:
    bridge = Bridge()
    server = bridge.start_blocking(
        StartConfig(backend="fake", http_base_port=0, log_level="warning", **options)
    )
    try:
        yield f"http://127.0.0.1:{server.port}"
    finally:
        bridge.stop()


def _visit(pages: _PageServer, bridge_root: str, tmp_path, name: str) -> dict[str, str]:
    """Open the page as ``http://<name>:<port>/`` in Chromium; what it could read."""
    pages.page = (PAGE % {"bridge": bridge_root}).encode()
    url = f"http://{name}:{pages.port}/"
    browser = subprocess.Popen(
        [CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}", url],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    got: dict[str, str] = {}
    try:
        while len(got) < 2:
            what, _, text = pages.results.get(timeout=90).partition(" ")
            got[what] = text
    finally:
        os.killpg(browser.pid, signal.SIGTERM)  # Chromium and the children it started
        try:
            browser.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(browser.pid, signal.SIGKILL)
            browser.wait(15)
    return got


@pytest.fixture
def other_origin() -> Iterator[_PageServer]:
    """A page server on 127.0.0.2: loopback to the network, another origin to the browser."""
    pages = _PageServer("127.0.0.2")
    yield pages
    pages.close()


def test_by_default_a_page_on_another_local_origin_cannot_read_the_bridge(other_origin, tmp_path):
    """Before issue 13 (cors_origin '*'), this page read the completion and /metrics."""
    with _bridge() as root:
        got = _visit(other_origin, root, tmp_path, "127.0.0.2")
    assert got["chat"].startswith("blocked:"), got
    assert got["metrics"].startswith("blocked:"), got


def test_with_cors_origin_for_it_the_page_can(other_origin, tmp_path):
    with _bridge(cors_origin=[f"http://127.0.0.2:{other_origin.port}"]) as root:
        got = _visit(other_origin, root, tmp_path, "127.0.0.2")
    assert got["chat"] == "read:echo: from the page", got
    assert got["metrics"].startswith("read:"), got


def test_by_default_a_page_on_a_loopback_origin_can(tmp_path):
    pages = _PageServer("127.0.0.1")
    try:
        with _bridge() as root:
            got = _visit(pages, root, tmp_path, "localhost")
    finally:
        pages.close()
    assert got["chat"] == "read:echo: from the page", got
    assert got["metrics"].startswith("read:"), got
