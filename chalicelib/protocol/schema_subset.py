"""OpenAI's JSON Schema subset, and the tools a request may pass: what the engine can enforce.

Plain Python (no torch, no grammar library), so any layer can check a request before it queues:
:func:`check_schema`, :func:`check_tools` and :func:`answer_schema` raise
:class:`UnsupportedSchemaError`, a 400 whose ``param`` names the request field at fault
(``response_format``, ``tools``, ``tool_choice``, ``parallel_tool_calls``) and whose message
says where in it. ``hpc_functions.engines.constrained`` enforces what passes.

One source, two packages: ``chalicelib/protocol/schema_subset.py`` is this file but for the
error block (there a ``BadRequestError``), so the API refuses at the door what the engine would
refuse. The Lambda package holds only chalicelib and hpc_functions never imports chalicelib, so
neither can import the other's; ``tests/unit/test_schema_subset_copy.py`` fails when the two
differ and, run as a script, rewrites the copy from this file.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

# --- the error: the one block that differs in hpc_functions/engines/schema_subset.py -------
from chalicelib.errors import BadRequestError


class UnsupportedSchemaError(BadRequestError):
    """A ``response_format`` or tools request the engines cannot enforce (a 400 with ``param``)."""

    def __init__(self, message: str, *, param: str) -> None:
        super().__init__(message, param=param)


# --- end of the error block -------------------------------------------------------------------

# OpenAI's documented limits for structured outputs and function calling.
MAX_TOOLS = 128
MAX_PROPERTIES = 5000  # object properties in one schema, all levels together
MAX_ENUM_VALUES = 1000  # enum values in one schema, all enums together
# Ours: bounds what one request can make the grammar compiler and the checker do.
MAX_SCHEMA_BYTES = 128 * 1024  # one schema, serialized
MAX_TOOLS_SCHEMA_BYTES = 1024 * 1024  # all tools' parameters together
MAX_SCHEMA_DEPTH = 16  # levels of nested subschemas (properties, items, anyOf, $defs...)

TOOL_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
SCHEMA_NAME = TOOL_NAME
FORMATS = frozenset(
    ["date-time", "time", "date", "duration", "email", "hostname", "ipv4", "ipv6", "uuid", "uri"]
)
TYPES = frozenset(["object", "array", "string", "number", "integer", "boolean", "null"])
_ANNOTATIONS = frozenset(
    [
        "title",
        "description",
        "default",
        "examples",
        "$comment",
        "$schema",
        "deprecated",
        "readOnly",
        "writeOnly",
    ]
)
_KEYWORDS = frozenset(
    [
        "type",
        "enum",
        "const",
        "anyOf",
        "$ref",
        "$defs",
        "definitions",
        "properties",
        "required",
        "additionalProperties",
        "items",
        "minItems",
        "maxItems",
        "pattern",
        "format",
        "minLength",
        "maxLength",
        "minimum",
        "maximum",
        "exclusiveMinimum",
        "exclusiveMaximum",
        "multipleOf",
    ]
)
# Known JSON Schema keywords outside OpenAI's subset, refused with a reason rather than ignored.
_REFUSED = {
    **dict.fromkeys(
        [
            "not",
            "if",
            "then",
            "else",
            "patternProperties",
            "propertyNames",
            "unevaluatedProperties",
            "unevaluatedItems",
            "dependentRequired",
            "dependentSchemas",
            "dependencies",
            "minProperties",
            "maxProperties",
            "contains",
            "minContains",
            "maxContains",
            "uniqueItems",
            "prefixItems",
            "additionalItems",
            "$dynamicRef",
            "$dynamicAnchor",
            "$recursiveRef",
        ],
        "",
    ),
    "allOf": "use anyOf or one schema",
    "oneOf": "use anyOf",
    "$id": "refs must be local (#/...)",
    "$anchor": "refs must be local (#/...)",
    "x-guidance": "it is an engine setting",
}
_LOOKAROUND = re.compile(r"\(\?<?[=!]|\\[1-9]|\\k<")


def check_schema(schema: Any, *, param: str = "response_format", where: str = "schema") -> None:
    """Refuse a JSON Schema outside OpenAI's structured-outputs subset or past our bounds.

    The root must be ``{"type": "object", ...}``. Supported: ``type`` (one or a list),
    ``properties``, ``required``, ``additionalProperties``, ``enum``, ``const``, ``anyOf``,
    local ``$ref`` with ``$defs`` / ``definitions`` (recursion included), ``items``,
    ``minItems`` / ``maxItems``, ``pattern`` (no lookaround or backreference), ``format`` (see
    ``FORMATS``), ``minLength`` / ``maxLength``, numeric bounds and ``multipleOf``; annotations
    (``title``, ``description``, ``default``...) and ``x-`` extensions are ignored. Anything else
    raises :class:`UnsupportedSchemaError` naming ``param`` and where in the schema it is.
    """
    if not isinstance(schema, dict):
        raise UnsupportedSchemaError(f"{where} must be a JSON object", param=param)
    try:
        size_bytes = len(json.dumps(schema))
    except (TypeError, ValueError) as exc:
        raise UnsupportedSchemaError(f"{where} is not JSON: {exc}", param=param) from exc
    if size_bytes > MAX_SCHEMA_BYTES:
        raise UnsupportedSchemaError(
            f"{where} is {size_bytes} bytes; at most {MAX_SCHEMA_BYTES} are supported", param=param
        )
    if schema.get("type") != "object":
        raise UnsupportedSchemaError(f'{where} must have "type": "object" at its root', param=param)
    checker = _SchemaChecker(schema, param)
    checker.check(schema, where, 0)


@dataclass
class _SchemaChecker:
    root: dict[str, Any]
    param: str
    properties: int = 0
    enum_values: int = 0

    def fail(self, where: str, message: str) -> UnsupportedSchemaError:
        return UnsupportedSchemaError(f"{where}: {message}", param=self.param)

    def check(self, node: Any, where: str, depth: int) -> None:
        if depth > MAX_SCHEMA_DEPTH:
            raise self.fail(where, f"nested deeper than {MAX_SCHEMA_DEPTH} levels")
        if not isinstance(node, dict):
            raise self.fail(where, "a schema must be a JSON object")
        for key, value in node.items():
            if key in _ANNOTATIONS or (key.startswith("x-") and key != "x-guidance"):
                continue
            if key in _REFUSED:
                reason = _REFUSED[key]
                raise self.fail(
                    where, f"{key!r} is not supported" + (f" ({reason})" if reason else "")
                )
            if key not in _KEYWORDS:
                raise self.fail(where, f"unknown keyword {key!r}")
            self.keyword(key, value, node, f"{where}.{key}", depth)

    def keyword(self, key: str, value: Any, node: dict[str, Any], where: str, depth: int) -> None:
        if key == "type":
            types = value if isinstance(value, list) else [value]
            if not types or any(t not in TYPES for t in types):
                raise self.fail(where, f"must be one of {sorted(TYPES)} or a list of them")
        elif key == "enum":
            if not isinstance(value, list) or not value:
                raise self.fail(where, "must be a non-empty list")
            self.enum_values += len(value)
            if self.enum_values > MAX_ENUM_VALUES:
                raise self.fail(where, f"more than {MAX_ENUM_VALUES} enum values in one schema")
        elif key == "anyOf":
            if not isinstance(value, list) or not value:
                raise self.fail(where, "must be a non-empty list of schemas")
            for i, sub in enumerate(value):
                self.check(sub, f"{where}[{i}]", depth + 1)
        elif key in ("$defs", "definitions"):
            if not isinstance(value, dict):
                raise self.fail(where, "must map names to schemas")
            for name, sub in value.items():
                self.check(sub, f"{where}.{name}", depth + 1)
        elif key == "$ref":
            self.check_ref(value, where)
        elif key == "properties":
            if not isinstance(value, dict):
                raise self.fail(where, "must map property names to schemas")
            self.properties += len(value)
            if self.properties > MAX_PROPERTIES:
                raise self.fail(where, f"more than {MAX_PROPERTIES} properties in one schema")
            for name, sub in value.items():
                self.check(sub, f"{where}.{name}", depth + 1)
        elif key == "required":
            names = value if isinstance(value, list) else None
            if names is None or any(not isinstance(n, str) for n in names):
                raise self.fail(where, "must be a list of property names")
            if len(set(names)) != len(names):
                raise self.fail(where, "lists a property twice")
            known = node.get("properties") or {}
            missing = [n for n in names if n not in known]
            if missing and node.get("additionalProperties") is False:
                raise self.fail(where, f"{missing} are required but not in properties")
        elif key == "additionalProperties":
            if not isinstance(value, bool):
                self.check(value, where, depth + 1)
        elif key == "items":
            if isinstance(value, list):
                raise self.fail(where, "must be one schema (tuple items are not supported)")
            self.check(value, where, depth + 1)
        elif key in ("minItems", "maxItems", "minLength", "maxLength"):
            if not _is_int(value) or value < 0:
                raise self.fail(where, "must be a non-negative integer")
            low, high = (
                ("minItems", "maxItems") if key.endswith("Items") else ("minLength", "maxLength")
            )
            if _is_int(node.get(low)) and _is_int(node.get(high)) and node[low] > node[high]:
                raise self.fail(where, f"{low} is above {high}")
        elif key in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf"):
            if not _is_number(value) or (key == "multipleOf" and value <= 0):
                raise self.fail(
                    where, "must be a number" + (" above 0" if key == "multipleOf" else "")
                )
        elif key == "pattern":
            self.check_pattern(value, where)
        elif key == "format" and value not in FORMATS:
            raise self.fail(where, f"format {value!r} is not supported (one of {sorted(FORMATS)})")

    def check_ref(self, ref: Any, where: str) -> None:
        if not isinstance(ref, str) or not ref.startswith("#"):
            raise self.fail(where, "only local refs (#, #/$defs/...) are supported")
        target: Any = self.root
        pointer = ref[1:]
        if pointer and not pointer.startswith("/"):
            raise self.fail(where, f"{ref!r} is not a JSON pointer")
        for part in pointer.split("/")[1:] if pointer else []:
            part = part.replace("~1", "/").replace("~0", "~")
            if not isinstance(target, dict) or part not in target:
                raise self.fail(where, f"{ref!r} points at nothing")
            target = target[part]
        if not isinstance(target, dict):
            raise self.fail(where, f"{ref!r} does not point at a schema")

    def check_pattern(self, pattern: Any, where: str) -> None:
        if not isinstance(pattern, str):
            raise self.fail(where, "must be a string")
        if _LOOKAROUND.search(pattern):
            raise self.fail(where, "lookarounds and backreferences are not supported")
        try:
            re.compile(pattern)
        except re.error as exc:
            raise self.fail(where, f"not a valid regular expression: {exc}") from None


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def check_tools(tools: Any, tool_choice: Any = None, parallel_tool_calls: Any = None) -> None:
    """Refuse tools, ``tool_choice`` or ``parallel_tool_calls`` this engine cannot serve."""
    tool_plan(tools, tool_choice, parallel_tool_calls)


def tool_plan(
    tools: Any, tool_choice: Any, parallel_tool_calls: Any
) -> tuple[list[tuple[str, dict[str, Any]]], str | None]:
    """The tools (name, parameters) a call may use, and the choice: auto / required / None."""
    if parallel_tool_calls is not None and not isinstance(parallel_tool_calls, bool):
        raise UnsupportedSchemaError(
            "parallel_tool_calls must be true or false", param="parallel_tool_calls"
        )
    if tools is None or tools == []:
        if tool_choice not in (None, "none"):
            raise UnsupportedSchemaError(
                "tool_choice needs tools to choose from", param="tool_choice"
            )
        return [], None
    if not isinstance(tools, list):
        raise UnsupportedSchemaError("tools must be a list", param="tools")
    if len(tools) > MAX_TOOLS:
        raise UnsupportedSchemaError(f"at most {MAX_TOOLS} tools are supported", param="tools")
    functions: list[tuple[str, dict[str, Any]]] = []
    total_bytes = 0
    for i, tool in enumerate(tools):
        where = f"tools[{i}]"
        kind = tool.get("type") if isinstance(tool, dict) else None
        if kind != "function":
            raise UnsupportedSchemaError(
                f"{where}: tools of type {str(kind)[:64]!r} are not supported; "
                'only {"type": "function"} tools are',
                param="tools",
            )
        function = tool.get("function")
        if not isinstance(function, dict):
            raise UnsupportedSchemaError(f"{where}.function must be an object", param="tools")
        name = function.get("name")
        if not isinstance(name, str) or not TOOL_NAME.match(name):
            raise UnsupportedSchemaError(
                f"{where}.function.name must be 1-64 letters, digits, _ or -", param="tools"
            )
        if any(name == other for other, _ in functions):
            raise UnsupportedSchemaError(f"{where}: two tools are named {name!r}", param="tools")
        parameters = function.get("parameters")
        if parameters is None:
            parameters = {"type": "object", "properties": {}, "additionalProperties": False}
        strict = function.get("strict")
        if strict is not None and not isinstance(strict, bool):
            raise UnsupportedSchemaError(
                f"{where}.function.strict must be true or false", param="tools"
            )
        total_bytes += _tool_schema_bytes(parameters, f"{where}.function.parameters")
        parameters = enforced_parameters(
            parameters, strict=bool(strict), where=f"{where}.function.parameters"
        )
        if total_bytes > MAX_TOOLS_SCHEMA_BYTES:
            raise UnsupportedSchemaError(
                f"the tools' parameters exceed {MAX_TOOLS_SCHEMA_BYTES} bytes together",
                param="tools",
            )
        functions.append((name, parameters))
    if tool_choice in (None, "auto"):
        return functions, "auto"
    if tool_choice == "none":
        return functions, None
    if tool_choice == "required":
        return functions, "required"
    named = tool_choice.get("function") if isinstance(tool_choice, dict) else None
    if not (
        isinstance(tool_choice, dict) and tool_choice.get("type") == "function"
    ) or not isinstance(named, dict):
        raise UnsupportedSchemaError(
            'tool_choice must be "none", "auto", "required" or '
            '{"type": "function", "function": {"name": ...}}',
            param="tool_choice",
        )
    chosen = [(n, p) for n, p in functions if n == named.get("name")]
    if not chosen:
        raise UnsupportedSchemaError(
            f"tool_choice names {named.get('name')!r}, which is not among the tools",
            param="tool_choice",
        )
    return chosen, "required"


# What a non-strict tool's arguments are held to when its schema is outside the subset.
ANY_OBJECT: dict[str, Any] = {"type": "object"}


def enforced_parameters(parameters: Any, *, strict: bool, where: str) -> dict[str, Any]:
    """The schema the engine enforces on a tool's arguments.

    A ``strict`` tool's schema must be inside the subset (else a 400 naming ``tools`` and where),
    as OpenAI requires. A non-strict one (OpenAI's default, and every Anthropic tool: Anthropic
    does not enforce ``input_schema``) may use any JSON Schema: its own schema is enforced when
    it is inside the subset, else its arguments are held to any JSON object. Either way it must
    be a JSON object within the size bound, and it reaches the chat template unchanged.
    """
    if not isinstance(parameters, dict):
        raise UnsupportedSchemaError(f"{where} must be a JSON object", param="tools")
    size_bytes = _tool_schema_bytes(parameters, where)
    if size_bytes > MAX_SCHEMA_BYTES:
        raise UnsupportedSchemaError(
            f"{where} is {size_bytes} bytes; at most {MAX_SCHEMA_BYTES} are supported",
            param="tools",
        )
    try:
        check_schema(parameters, param="tools", where=where)
    except UnsupportedSchemaError:
        if strict:
            raise
        return dict(ANY_OBJECT)
    return dict(parameters)


def _tool_schema_bytes(parameters: Any, where: str) -> int:
    try:
        return len(json.dumps(parameters))
    except (TypeError, ValueError) as exc:
        raise UnsupportedSchemaError(f"{where} is not JSON: {exc}", param="tools") from exc


def answer_schema(response_format: Any) -> dict[str, Any] | None:
    """The schema a ``response_format`` asks for (``json_object``: any object), or None."""
    if response_format is None:
        return None
    kind = response_format.get("type") if isinstance(response_format, dict) else None
    if kind == "text":
        return None
    if kind == "json_object":
        return {"type": "object"}
    if kind != "json_schema":
        raise UnsupportedSchemaError(
            'response_format.type must be "text", "json_object" or "json_schema"',
            param="response_format",
        )
    spec = response_format.get("json_schema")
    if not isinstance(spec, dict):
        raise UnsupportedSchemaError(
            "response_format.json_schema must be an object", param="response_format"
        )
    name = spec.get("name")
    if not isinstance(name, str) or not SCHEMA_NAME.match(name):
        raise UnsupportedSchemaError(
            "response_format.json_schema.name must be 1-64 letters, digits, _ or -",
            param="response_format",
        )
    schema = spec.get("schema")
    if schema is None:
        return {"type": "object"}
    check_schema(schema, param="response_format", where="response_format.json_schema.schema")
    return dict(schema)
