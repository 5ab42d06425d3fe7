"""Parameters schemas made fit for a forced-call grammar: refs rebased, objects closed."""

from __future__ import annotations

from dvai_bridge.protocol.call_schema import closed, rebased


def test_local_refs_are_rebased_and_values_left_alone() -> None:
    schema = {
        "$defs": {"A": {"type": "object", "properties": {"next": {"$ref": "#"}}}},
        "properties": {"a": {"$ref": "#/$defs/A"}, "b": {"const": {"$ref": "#/x"}}},
        "anyOf": [{"$ref": "other.json#/x"}],
    }
    out = rebased(schema, "#/properties/arguments")
    assert out["properties"]["a"]["$ref"] == "#/properties/arguments/$defs/A"
    assert out["$defs"]["A"]["properties"]["next"]["$ref"] == "#/properties/arguments"
    assert out["properties"]["b"] == {"const": {"$ref": "#/x"}}  # a value, not a schema
    assert out["anyOf"] == [{"$ref": "other.json#/x"}]  # not local


def test_objects_without_additional_properties_are_closed() -> None:
    schema = {
        "type": "object",
        "properties": {
            "inner": {"type": "object", "properties": {"x": {"type": "integer"}}},
            "free": {"type": "object", "additionalProperties": True},
            "pattern": {"type": "object", "patternProperties": {"^a": {}}},
            "items": {"type": "array", "items": {"properties": {"y": {}}}},
            "properties": {"type": "string"},  # a property named like the keyword
            "mixed": {"allOf": [{"properties": {"a": {}}}, {"properties": {"b": {}}}]},
        },
    }
    out = closed(schema)
    assert out["additionalProperties"] is False
    p = out["properties"]
    assert p["inner"]["additionalProperties"] is False
    assert p["free"]["additionalProperties"] is True
    assert "additionalProperties" not in p["pattern"]
    assert p["items"]["items"]["additionalProperties"] is False
    assert p["properties"] == {"type": "string"}
    assert all("additionalProperties" not in s for s in p["mixed"]["allOf"])
    assert closed({"type": "object", "properties": {}}) == {
        "type": "object",
        "properties": {},
        "additionalProperties": False,
    }
    assert "additionalProperties" not in schema["properties"]["inner"]  # input untouched
