"""The HTTP fixtures of tests/http (fake backend, in-process app) serve these tests too."""

from tests.http.conftest import client, client_for  # noqa: F401  (fixtures)
