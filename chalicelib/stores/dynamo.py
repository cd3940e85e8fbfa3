"""Conversions shared by the DynamoDB stores: Decimal out, Decimal in, and the wire format; and
the one reading of a conditional write that lost (``ConditionalCheckFailedException``)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from decimal import Decimal
from typing import Any, cast

from boto3.dynamodb.types import TypeDeserializer, TypeSerializer
from botocore.exceptions import ClientError


def plain(value: Any) -> Any:
    """DynamoDB numbers come back as Decimal and sets as sets; hand out ints/floats/lists."""
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, set)):
        return [plain(v) for v in value]
    return value


def dynamo(value: Any) -> Any:
    """A JSON-able value as the resource layer wants it (floats as Decimal)."""
    return json.loads(json.dumps(value), parse_float=Decimal)


_SERIALIZER = TypeSerializer()
_DESERIALIZER = TypeDeserializer()


def _decimals(value: Any) -> Any:
    if isinstance(value, float):
        return Decimal(repr(value))
    if isinstance(value, dict):
        return {k: _decimals(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_decimals(v) for v in value]
    return value


def to_wire(values: Mapping[str, Any]) -> dict[str, Any]:
    """Plain values → the low-level client's attribute values (``{"S": ...}``, ``{"N": ...}``).

    The low-level client with boto3's own serializer costs a fraction of the resource layer's
    CPU per call (which walks the service model to transform every parameter).
    """
    return {k: _SERIALIZER.serialize(_decimals(v)) for k, v in values.items()}


def from_wire(item: dict[str, Any]) -> dict[str, Any]:
    """Low-level attribute values → plain ints, floats, strings, lists and dicts."""
    return {k: plain(_DESERIALIZER.deserialize(v)) for k, v in item.items()}


def condition_failed(exc: ClientError) -> bool:
    """Whether a write failed because its condition did not hold (the item is not in the state
    the write expected), rather than for any other reason (raised on)."""
    return bool(exc.response["Error"]["Code"] == "ConditionalCheckFailedException")


def old_item(exc: ClientError) -> dict[str, Any]:
    """The item a write that lost its condition found, in the wire format (a write with
    ``ReturnValuesOnConditionCheckFailure="ALL_OLD"``; empty when there was no item, or the
    write did not ask: the stubs' error response has no "Item" key)."""
    return cast("dict[str, Any]", exc.response.get("Item") or {})
