"""HEAD and OPTIONS from the real routes, UTF-8 bodies only, and an OpenAPI schema that lists
the statuses the server answers (issue 13 item 12, HTTP parts). In-process, fake backend."""

from __future__ import annotations

import json

import pytest

from tests.http.conftest import chat
from tests.http.test_errors import assert_envelope

URL = "/v1/chat/completions"


# -- HEAD --------------------------------------------------------------------------------------
@pytest.mark.parametrize("path", ["/health", "/v1/models", "/v1/models/fake-model", "/metrics"])
def test_head_on_a_get_route_answers_like_get_without_a_body(client, path):
    get = client.get(path)
    head = client.head(path)
    assert head.status_code == get.status_code == 200  # was 405
    assert head.content == b""
    assert head.headers["content-type"] == get.headers["content-type"]
    if path != "/metrics":  # its counters move between the two requests
        assert head.headers["content-length"] == str(len(get.content))


def test_head_on_a_post_route_is_405_naming_the_methods(client):
    r = client.head(URL)
    assert r.status_code == 405 and "POST" in r.headers["allow"]
    assert r.content == b""


def test_head_on_an_unknown_path_is_404(client):
    r = client.head("/nope")
    assert r.status_code == 404 and r.content == b""


# -- OPTIONS -----------------------------------------------------------------------------------
@pytest.mark.parametrize("path", ["/nope", "/v1/chat", "/v1/chat/completions/x", "/v2/models"])
def test_options_on_an_unknown_path_is_a_404_envelope(client, path):
    r = client.options(path)  # was 204 for any path
    assert_envelope(r, 404, code="not_found")
    assert path in r.json()["error"]["message"]


@pytest.mark.parametrize(
    "path,methods",
    [
        (URL, "OPTIONS, POST"),
        ("/health", "GET, HEAD, OPTIONS"),
        ("/v1/models/anything", "GET, HEAD, OPTIONS"),
        ("/v1/responses/resp_1", "DELETE, GET, HEAD, OPTIONS"),
        ("/v1/responses/input_tokens", "OPTIONS, POST"),  # not also a response's id
    ],
)
def test_options_on_a_known_path_names_its_methods(client, path, methods):
    r = client.options(path)
    assert r.status_code == 204 and r.content == b""
    assert r.headers["allow"] == methods


@pytest.mark.parametrize(
    "method,path,methods",
    [
        ("PUT", "/v1/responses/resp_1", "DELETE, GET, HEAD, OPTIONS"),  # was GET only
        ("GET", "/v1/responses/input_tokens", "OPTIONS, POST"),  # was a 404 for that id
        ("PUT", URL, "OPTIONS, POST"),
    ],
)
def test_a_405_names_every_method_of_the_path(client, method, path, methods):
    """Starlette's 405 names the first route's methods; a path with GET and DELETE routes
    got ``Allow: GET`` (schemathesis found it)."""
    r = client.request(method, path)
    err = assert_envelope(r, 405)
    assert r.headers["allow"] == methods and methods in err["message"]


@pytest.mark.parametrize("cors", [[], None, "*"])
def test_options_is_the_same_whatever_the_cors_setting(client_for, cors):
    client = client_for(cors_origin=cors)
    assert client.options("/nope").status_code == 404
    assert client.options(URL).status_code == 204


# -- body encoding -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "encoding", ["utf-16", "utf-16-le", "utf-16-be", "utf-32", "utf-32-le", "utf-32-be"]
)
def test_a_body_not_in_utf8_is_refused_naming_its_encoding(client, encoding):
    body = json.dumps(chat("hi")).encode(encoding)  # "utf-16"/"utf-32" carry a BOM
    r = client.post(URL, content=body, headers={"content-type": "application/json"})
    err = assert_envelope(r, 400, code="invalid_request")  # was 200: json.loads detects it
    assert encoding.upper().split("-")[0] in err["message"].upper()
    assert "UTF-8" in err["message"] and "body" in err["message"]


def test_utf8_bodies_with_or_without_bom_are_read(client):
    for body in (
        json.dumps(chat("hi")).encode(),
        json.dumps(chat("hi")).encode("utf-8-sig"),
        json.dumps(chat("héllo ✓"), ensure_ascii=False).encode(),
    ):
        r = client.post(URL, content=body, headers={"content-type": "application/json"})
        assert r.status_code == 200, r.text


# -- OpenAPI -------------------------------------------------------------------------------------
def _responses(client, key: str | None = None) -> dict[tuple[str, str], set[str]]:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    schema = client.get("/openapi.json", headers=headers).json()
    return {
        (m, p): set(op["responses"])
        for p, item in schema["paths"].items()
        for m, op in item.items()
    }


def test_openapi_lists_the_statuses_each_route_answers(client):
    got = _responses(client)
    inference = {"200", "400", "403", "404", "408", "413", "429", "500", "501", "503"}
    assert got[("post", URL)] == inference  # was {200, 422}; 404: model_not_found
    assert got[("post", "/v1/completions")] == inference
    assert got[("post", "/v1/embeddings")] == inference
    assert got[("get", "/v1/models/{model_id}")] == {"200", "403", "404", "500", "503"}
    assert got[("get", "/health")] == {"200", "403", "503"}
    assert not any("422" in statuses for statuses in got.values())


def test_openapi_lists_401_only_when_the_server_has_keys(client_for):
    with_keys = _responses(client_for(api_key="k"), key="k")
    assert "401" in with_keys[("post", URL)] and "401" not in with_keys[("get", "/health")]
    assert "401" not in _responses(client_for())[("post", URL)]


def test_openapi_errors_are_described_as_the_envelope(client):
    schema = client.get("/openapi.json").json()
    ref = schema["paths"][URL]["post"]["responses"]["400"]["content"]["application/json"]
    name = ref["schema"]["$ref"].rsplit("/", 1)[1]
    envelope = schema["components"]["schemas"][name]
    assert envelope["required"] == ["error"]
    assert set(envelope["properties"]["error"]["required"]) == {"message", "type", "param", "code"}


def test_openapi_documents_streamed_answers_as_event_streams(client):
    schema = client.get("/openapi.json").json()
    for path in (URL, "/v1/completions"):
        content = schema["paths"][path]["post"]["responses"]["200"]["content"]
        assert "text/event-stream" in content and "application/json" in content
