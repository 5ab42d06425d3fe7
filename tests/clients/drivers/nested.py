"""The nested output model both the client drivers and tests/forced_call_cases.py ask for.

Pydantic only (the drivers run in .venv-clients, from this folder, without the ``tests``
package): ``from nested import Trip`` there, ``from tests.clients.drivers.nested import Trip``
elsewhere.
"""

from __future__ import annotations

from pydantic import BaseModel, Field


class Country(BaseModel):
    name: str = Field(max_length=30)
    code: str = Field(max_length=3)


class Trip(BaseModel):
    """A nested model: its JSON schema has ``$defs`` and ``$ref`` (pydantic's default)."""

    city: str = Field(max_length=30)
    country: Country
