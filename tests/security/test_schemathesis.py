"""Schemathesis against the app's own OpenAPI schema (fake backend): never a 5xx.

Schemathesis generates valid and invalid requests for every operation from /openapi.json and
sends them through the whole app, guards included. The one 5xx allowed is 501 ``not_supported``,
the documented answer of /v1/embeddings on a chat model. ``SCHEMATHESIS_EXAMPLES`` (per operation,
default 60) makes the run longer; the count of requests sent is printed at the end.
"""

from __future__ import annotations

import os
from collections import Counter

import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from dvai_bridge.backends.fake import FakeBackend
from tests.http.conftest import make_app

EXAMPLES = int(os.environ.get("SCHEMATHESIS_EXAMPLES", "60"))
BASE = "http://127.0.0.1"



class VocabFake(FakeBackend):
    """The fake with a vocabulary size, as real backends have: token-id prompts get checked.

    (The plain fake has none: a prompt of out-of-range ids then reaches its decoder, which
    fails, and the request is a 500 backend_error; a real backend refuses it with a 400.)
    """

    vocab_size = 259


app, scheduler = make_app(VocabFake(context_length=2048))
schema = schemathesis.openapi.from_asgi("/openapi.json", app, headers={"Host": "127.0.0.1"})
sent: Counter[str] = Counter()
statuses: Counter[int] = Counter()


@pytest.fixture(scope="module", autouse=True)
def _close_the_engine():
    yield
    scheduler.close()


@schema.parametrize()
@settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
          suppress_health_check=list(HealthCheck))
def test_no_request_gets_a_server_error(case):
    response = case.call(base_url=BASE)
    sent[case.operation.label] += 1
    statuses[response.status_code] += 1
    if response.status_code >= 400:
        body = response.json()
        assert set(body["error"]) == {"message", "type", "param", "code"}, body
        if response.status_code == 501 and body["error"]["code"] == "not_supported":
            return  # a capability the fake model lacks (embeddings): an answer, not a failure
    assert response.status_code < 500, (case.as_curl_command(), response.text)


def test_zz_report_the_run(capsys):
    """Runs after the generated tests (file order): how many requests went out, and answers."""
    total = sum(sent.values())
    with capsys.disabled():
        print(f"\nschemathesis: {total} requests over {len(sent)} operations; "
              f"statuses {dict(sorted(statuses.items()))}")
    if sent:  # absent when only this test was selected
        assert total >= len(sent) and all(s < 500 or s == 501 for s in statuses)
