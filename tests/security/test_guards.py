"""Host and Origin checks, API keys, CORS and the body limit, in-process on the fake backend."""

from __future__ import annotations

import logging

import pytest

from dvai_bridge import StartConfig
from dvai_bridge.errors import ConfigurationInvalid
from dvai_bridge.http.security import (
    MAX_BODY_BYTES,
    HostGuard,
    KeyCheck,
    SecurityOptions,
    is_loopback,
    load_api_keys,
    warn_if_exposed,
)
from tests.http.conftest import chat
from tests.http.test_errors import assert_envelope

URL = "/v1/chat/completions"


def ok(r) -> None:
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"] == "echo: hi"


# -- Host header: DNS rebinding ----------------------------------------------------------
@pytest.mark.parametrize(
    "host",
    [
        "127.0.0.1",
        "127.0.0.1:38883",
        "localhost",
        "localhost:1",
        "LOCALHOST:80",
        "localhost.",
        "[::1]",
        "[::1]:38883",
        "127.0.0.2:9",
    ],
)
def test_loopback_host_names_with_any_port_are_served(client, host):
    ok(client.post(URL, json=chat("hi"), headers={"Host": host}))


@pytest.mark.parametrize(
    "host",
    [
        "evil.example",
        "evil.example:38883",
        "127.0.0.1.nip.io",
        "localhost.evil.example",
        "attacker.localhost.example:38883",
        "192.168.1.10:38883",
        "0.0.0.0",
        "[::]",
        "[::1",
        "localhost:x",
        "[::1]x",
        "127.0.0.1:80:80",
    ],
)
def test_other_host_names_are_refused_as_dns_rebinding(client, host):
    r = client.post(URL, json=chat("hi"), headers={"Host": host})
    err = assert_envelope(r, 403, param="host", code="host_not_allowed")
    assert "DNS rebinding" in err["message"]
    assert client.get("/health", headers={"Host": host}).status_code == 403


def test_allowed_hosts_add_names_suffixes_or_everything(client_for):
    client = client_for(allowed_hosts=["my-box.lan", ".corp.example"])
    ok(client.post(URL, json=chat("hi"), headers={"Host": "my-box.lan:38883"}))
    ok(client.post(URL, json=chat("hi"), headers={"Host": "gpu.corp.example"}))
    assert (
        client.post(URL, json=chat("hi"), headers={"Host": "corp.example.evil"}).status_code == 403
    )
    anyone = client_for(allowed_hosts=["*"])
    ok(anyone.post(URL, json=chat("hi"), headers={"Host": "whatever.example"}))


def test_a_request_without_host_is_not_a_browser_and_passes():
    assert HostGuard(None, allowed_hosts=()).host_allowed(None)  # type: ignore[arg-type]


def test_the_bound_address_is_an_allowed_host_unless_it_is_a_wildcard():
    assert (
        "192.168.1.10"
        in SecurityOptions.from_config(StartConfig(host="192.168.1.10", api_key="k")).allowed_hosts
    )
    assert SecurityOptions.from_config(StartConfig(host="0.0.0.0", api_key="k")).allowed_hosts == ()


# -- Origin and CORS ---------------------------------------------------------------------
LOOPBACK_PAGES = [
    "http://localhost",
    "http://localhost:3000",
    "https://localhost:8443",
    "http://127.0.0.1:8080",
    "http://127.0.0.1",
    "http://[::1]:5173",
    "HTTP://LOCALHOST:3000/",
]
OTHER_PAGES = [
    "https://app.example",
    "http://127.0.0.2:8000",
    "http://localhost.evil.example",
    "http://127.0.0.1.nip.io",
    "null",
    "http://localhost:3000.evil.example",
    "file://",
    "http://[::2]:80",
    "ws://localhost:3000",
]


@pytest.mark.parametrize("origin", LOOPBACK_PAGES)
def test_by_default_pages_on_loopback_origins_may_call(client, origin):
    r = client.post(URL, json=chat("hi"), headers={"Origin": origin})
    ok(r)
    assert r.headers["access-control-allow-origin"] == origin
    assert "origin" in r.headers["vary"].lower()


@pytest.mark.parametrize("origin", OTHER_PAGES)
def test_by_default_other_pages_are_refused(client, origin):
    """Before issue 13 the default was '*': any page the user opened could drive the server."""
    r = client.post(URL, json=chat("hi"), headers={"Origin": origin})
    assert_envelope(r, 403, param="origin", code="origin_not_allowed")
    assert "access-control-allow-origin" not in r.headers
    r = client.get("/metrics", headers={"Origin": origin})
    assert r.status_code == 403


def test_the_default_config_is_loopback_pages_only():
    assert StartConfig().cors_origin == []
    assert SecurityOptions.from_config(StartConfig()).cors_origin == []


def test_wildcard_cors_lets_any_page_in_when_asked_for(client_for):
    client = client_for(cors_origin="*")
    r = client.post(URL, json=chat("hi"), headers={"Origin": "https://app.example"})
    ok(r)
    assert r.headers["access-control-allow-origin"] == "*"


def test_configured_origins_are_added_to_the_loopback_ones(client_for):
    client = client_for(cors_origin="https://app.example")
    for origin in ("https://app.example", "http://localhost:3000"):
        ok(client.post(URL, json=chat("hi"), headers={"Origin": origin}))
    assert (
        client.post(URL, json=chat("hi"), headers={"Origin": "http://127.0.0.2:8000"}).status_code
        == 403
    )


def test_exact_origin_and_allow_list(client_for):
    exact = client_for(cors_origin="https://app.example")
    r = exact.post(URL, json=chat("hi"), headers={"Origin": "https://app.example"})
    ok(r)
    assert r.headers["access-control-allow-origin"] == "https://app.example"
    r = exact.post(URL, json=chat("hi"), headers={"Origin": "https://evil.example"})
    assert_envelope(r, 403, param="origin", code="origin_not_allowed", mentions="evil.example")
    ok(exact.post(URL, json=chat("hi")))  # no Origin: not a browser page
    listed = client_for(cors_origin=["https://a.example", "http://localhost:3000"])
    ok(listed.post(URL, json=chat("hi"), headers={"Origin": "http://localhost:3000"}))
    assert (
        listed.post(URL, json=chat("hi"), headers={"Origin": "https://b.example"}).status_code
        == 403
    )


def test_without_cors_no_page_may_drive_the_server(client_for):
    client = client_for(cors_origin=None)
    ok(client.post(URL, json=chat("hi")))
    for origin in ("https://app.example", "http://localhost:3000"):
        r = client.post(URL, json=chat("hi"), headers={"Origin": origin})
        assert_envelope(r, 403, code="origin_not_allowed")
    assert client.options(URL).status_code == 204


PREFLIGHT = {
    "Origin": "https://app.example",
    "Access-Control-Request-Method": "POST",
    "Access-Control-Request-Headers": "authorization, content-type",
}


@pytest.mark.parametrize(
    "cors,origin",
    [
        ("*", "https://app.example"),
        ("https://app.example", "https://app.example"),
        (["https://app.example"], "https://app.example"),
        ([], "http://localhost:3000"),
    ],
)
def test_preflight_is_204_with_private_network_access(client_for, cors, origin):
    client = client_for(cors_origin=cors, api_key="k")  # preflights carry no key
    r = client.options(
        URL,
        headers={**PREFLIGHT, "Origin": origin, "Access-Control-Request-Private-Network": "true"},
    )
    assert r.status_code == 204 and r.content == b""
    assert r.headers["access-control-allow-origin"] in ("*", origin)
    assert "POST" in r.headers["access-control-allow-methods"]
    assert r.headers["access-control-allow-headers"] == "authorization, content-type"
    assert r.headers["access-control-allow-private-network"] == "true"


@pytest.mark.parametrize("cors", ["default", "https://app.example"])
def test_preflight_from_an_origin_not_allowed_gets_no_private_network_access(client_for, cors):
    """Before: with the default '*' every page got Access-Control-Allow-Private-Network."""
    client = client_for() if cors == "default" else client_for(cors_origin=cors)
    r = client.options(
        URL,
        headers={
            **PREFLIGHT,
            "Origin": "https://evil.example",
            "Access-Control-Request-Private-Network": "true",
        },
    )
    assert_envelope(r, 403, code="origin_not_allowed")
    assert not [h for h in r.headers if h.startswith("access-control-allow")], r.headers


def test_a_refused_preflight_carries_no_allow_headers():
    from starlette.datastructures import Headers

    from dvai_bridge.http.security import Cors, OriginPolicy

    cors = Cors(None, origins=OriginPolicy.of([]))  # type: ignore[arg-type]
    r = cors.preflight_response(
        Headers(
            {
                "origin": "https://evil.example",
                "access-control-request-method": "POST",
                "access-control-request-private-network": "true",
            }
        )
    )
    assert r.status_code == 403
    assert not [h for h in r.headers if h.startswith("access-control-allow")], r.headers


def test_plain_options_is_204(client):
    r = client.options(URL)
    assert r.status_code == 204 and "POST" in r.headers["allow"]


# -- API keys ----------------------------------------------------------------------------
def test_several_keys_each_work_and_health_stays_open(client_for):
    client = client_for(api_key=["first-key", "second-key"])
    for key in ("first-key", "second-key"):
        ok(client.post(URL, json=chat("hi"), headers={"Authorization": f"Bearer {key}"}))
    for header in (
        {},
        {"Authorization": "Bearer first-ke"},
        {"Authorization": "Bearer first-key2"},
        {"Authorization": "first-key"},
        {"Authorization": "Basic first-key"},
        {"Authorization": "Bearer "},
    ):
        r = client.post(URL, json=chat("hi"), headers=header)
        assert_envelope(r, 401, code="invalid_api_key", mentions="Bearer")
        assert r.headers["www-authenticate"] == "Bearer"
    assert client.get("/health").status_code == 200
    assert client.get("/metrics").status_code == 401
    assert client.get("/v1/models").status_code == 401


def test_scheme_is_case_insensitive_and_extra_spaces_are_ignored(client_for):
    client = client_for(api_key="k1")
    ok(client.post(URL, json=chat("hi"), headers={"Authorization": "bearer  k1"}))


def test_key_check_hashes_before_comparing():
    check = KeyCheck(None, keys=["short", "a-much-longer-key"])  # type: ignore[arg-type]
    assert {len(d) for d in check.digests} == {32}  # equal lengths: no length leaks
    assert check.authorized("Bearer a-much-longer-key") and not check.authorized("Bearer x")


def test_keys_from_option_list_and_file(tmp_path):
    f = tmp_path / "keys"
    f.write_text("# team keys\nalpha\n\n  beta  \n")
    assert load_api_keys(["one", " ", "two"], str(f)) == {"one", "two", "alpha", "beta"}
    assert load_api_keys("solo", None) == {"solo"}
    assert load_api_keys(None, None) == frozenset()


def test_a_bad_key_file_is_a_configuration_error(tmp_path):
    with pytest.raises(ConfigurationInvalid, match="Cannot read") as info:
        load_api_keys(None, str(tmp_path / "missing"))
    assert info.value.param == "api_key_file"
    empty = tmp_path / "empty"
    empty.write_text("# nothing\n")
    with pytest.raises(ConfigurationInvalid, match="holds no key"):
        load_api_keys(None, str(empty))


def test_cli_reads_several_keys_from_the_environment(monkeypatch):
    from dvai_bridge.cli import _model_options, serve

    monkeypatch.setenv("DVAI_BRIDGE_API_KEY", "k1 k2")
    ctx = serve.make_context(
        "serve", ["--allowed-host", "box.lan", "--cors-origin", "https://a.example"]
    )
    options = _model_options(dict(ctx.params))  # as serve builds its StartConfig
    config = StartConfig(**{k: v for k, v in options.items() if k in StartConfig.model_fields})
    assert config.api_key == ["k1", "k2"]
    assert config.allowed_hosts == ["box.lan"]
    assert config.cors_origin == ["https://a.example"]
    monkeypatch.delenv("DVAI_BRIDGE_API_KEY")
    ctx = serve.make_context("serve", ["--cors-origin", "none"])
    assert ctx.params["cors_origin"] is None
    assert serve.make_context("serve", []).params["cors_origin"] == []
    assert serve.make_context("serve", ["--cors-origin", "*"]).params["cors_origin"] == ["*"]


def test_an_api_key_on_the_command_line_is_warned_about(monkeypatch, capsys):
    from dvai_bridge.cli import serve

    monkeypatch.delenv("DVAI_BRIDGE_API_KEY", raising=False)
    serve.make_context("serve", ["--api-key", "secret"])
    err = capsys.readouterr().err
    assert "visible to every user" in err and "DVAI_BRIDGE_API_KEY" in err
    assert "--api-key-file" in err and "secret" not in err
    monkeypatch.setenv("DVAI_BRIDGE_API_KEY", "secret")
    serve.make_context("serve", [])
    assert capsys.readouterr().err == ""


def test_a_key_file_others_can_read_is_warned_about(tmp_path, caplog):
    f = tmp_path / "keys"
    f.write_text("k1\n")
    f.chmod(0o644)
    with caplog.at_level(logging.WARNING, logger="dvai_bridge.http.security"):
        assert load_api_keys(None, str(f)) == {"k1"}
    assert "other users" in caplog.text and "chmod 600" in caplog.text and "0o644" in caplog.text
    assert "k1" not in caplog.text
    caplog.clear()
    f.chmod(0o600)
    with caplog.at_level(logging.WARNING, logger="dvai_bridge.http.security"):
        load_api_keys(None, str(f))
    assert caplog.text == ""


# -- exposure warning ----------------------------------------------------------------------
def test_binding_beyond_loopback_without_a_key_warns_loudly(caplog):
    with caplog.at_level(logging.WARNING, logger="dvai_bridge.http.security"):
        warn_if_exposed("0.0.0.0", frozenset())
    assert "NOT a loopback address" in caplog.text and "--api-key" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="dvai_bridge.http.security"):
        warn_if_exposed("0.0.0.0", frozenset({"k"}))
        warn_if_exposed("127.0.0.1", frozenset())
        warn_if_exposed("::1", frozenset())
        warn_if_exposed("localhost", frozenset())
    assert caplog.text == ""


@pytest.mark.parametrize(
    "host,loop",
    [
        ("127.0.0.1", True),
        ("127.8.8.8", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("::", False),
        ("192.168.0.2", False),
        ("my.host", False),
    ],
)
def test_is_loopback(host, loop):
    assert is_loopback(host) is loop


# -- body limit ----------------------------------------------------------------------------
def test_default_limit_is_16_mib():
    assert MAX_BODY_BYTES == 16 * 1024 * 1024


def test_a_body_over_the_limit_is_413_by_content_length(client_for):
    client = client_for(max_body_bytes=1024)
    r = client.post(
        URL, content=b"{" + b" " * 2000 + b"}", headers={"content-type": "application/json"}
    )
    assert_envelope(r, 413, code="request_too_large", mentions="1,024 bytes")
    ok(client.post(URL, json=chat("hi")))


def test_a_chunked_body_over_the_limit_is_413(client_for):
    client = client_for(max_body_bytes=1024)

    def body():
        yield b'{"messages": [{"role": "user", "content": "'
        for _ in range(20):
            yield b"x" * 100
        yield b'"}]}'

    r = client.post(URL, content=body(), headers={"content-type": "application/json"})
    assert "content-length" not in r.request.headers
    assert_envelope(r, 413, code="request_too_large")


def test_a_chunked_body_under_the_limit_is_served(client_for):
    client = client_for(max_body_bytes=1024)

    def body():
        yield b'{"messages": [{"role": "user", '
        yield b'"content": "hi"}]}'

    ok(client.post(URL, content=body(), headers={"content-type": "application/json"}))


def test_a_body_of_exactly_the_limit_is_read(client_for):
    payload = b'{"messages": [{"role": "user", "content": "hi"}]}'
    client = client_for(max_body_bytes=len(payload))
    ok(client.post(URL, content=payload, headers={"content-type": "application/json"}))


def test_an_unauthenticated_huge_body_is_refused_before_it_is_read(client_for):
    client = client_for(api_key="k", max_body_bytes=1024)
    r = client.post(URL, content=b"x" * 5000, headers={"content-type": "application/json"})
    assert r.status_code == 401
