"""The API's schema checks are the engine's, byte for byte but for the error class.

``hpc_functions/engines/schema_subset.py`` is the source; ``chalicelib/protocol/schema_subset.py``
is written from it (run this file as a script to rewrite it). Both packages must check the same
schemas the same way: the API refuses at the door, the engine refuses what reaches it anyway.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

import pytest

from chalicelib.errors import BadRequestError
from chalicelib.protocol import schema_subset as api
from hpc_functions.engines import schema_subset as engine

ROOT = Path(__file__).resolve().parents[2]
SOURCE = ROOT / "hpc_functions/engines/schema_subset.py"
COPY = ROOT / "chalicelib/protocol/schema_subset.py"
_BLOCK = re.compile(r"# --- the error: .*?# --- end of the error block -+\n", re.DOTALL)
API_ERROR_BLOCK = '''# --- the error: the one block that differs in hpc_functions/engines/schema_subset.py -------
from chalicelib.errors import BadRequestError


class UnsupportedSchemaError(BadRequestError):
    """A ``response_format`` or tools request the engines cannot enforce (a 400 with ``param``)."""

    def __init__(self, message: str, *, param: str) -> None:
        super().__init__(message, param=param)


# --- end of the error block -------------------------------------------------------------------
'''


def expected_copy() -> str:
    source = SOURCE.read_text()
    assert len(_BLOCK.findall(source)) == 1, "the source must hold exactly one error block"
    return _BLOCK.sub(lambda _: API_ERROR_BLOCK, source)


def test_the_api_copy_is_the_engine_source_but_for_the_error_block() -> None:
    assert COPY.read_text() == expected_copy(), (
        f"{COPY.relative_to(ROOT)} differs from {SOURCE.relative_to(ROOT)}: "
        "run `python tests/unit/test_schema_subset_copy.py` to rewrite it"
    )


def _obj(properties: dict[str, Any]) -> dict[str, Any]:
    return {"type": "object", "properties": properties, "additionalProperties": False}


def _tool(name: str, parameters: Any = None, strict: bool | None = None) -> dict[str, Any]:
    return {
        "type": "function",
        "function": {"name": name, "parameters": parameters, "strict": strict},
    }


CASES: list[tuple[str, Any]] = [
    ("response_format", {"type": "json_object"}),
    ("response_format", {"type": "json_schema", "json_schema": {"name": "a", "schema": _obj({})}}),
    ("response_format", {"type": "xml"}),
    ("response_format", {"type": "json_schema", "json_schema": {"name": "a b"}}),
    (
        "response_format",
        {"type": "json_schema", "json_schema": {"name": "a", "schema": _obj({"x": {"not": {}}})}},
    ),
    ("tools", [_tool("f", _obj({"a": {"type": "string"}}))]),
    ("tools", [_tool("bad name")]),
    ("tools", [{"type": "custom", "custom": {"name": "x"}}]),
    ("tools", [_tool("f", {"type": "object", "oneOf": []})]),
    ("tools", [_tool("f", {"type": "object", "oneOf": []}, strict=True)]),
    ("tools", [_tool(f"f{i}") for i in range(engine.MAX_TOOLS + 1)]),
]


def _outcome(module: Any, field: str, value: Any) -> tuple[str | None, str | None]:
    try:
        if field == "tools":
            module.check_tools(value)
        else:
            module.answer_schema(value)
    except module.UnsupportedSchemaError as exc:
        return exc.param, exc.message
    return None, None


@pytest.mark.parametrize(("field", "value"), CASES)
def test_api_and_engine_accept_and_refuse_the_same_requests(field: str, value: Any) -> None:
    assert _outcome(api, field, value) == _outcome(engine, field, value)


def test_the_api_error_is_a_400_from_the_one_error_tree() -> None:
    with pytest.raises(BadRequestError) as caught:
        api.check_tools([_tool("bad name")])
    assert caught.value.to_body()["error"]["param"] == "tools"


if __name__ == "__main__":
    COPY.write_text(expected_copy())
    sys.stdout.write(f"wrote {COPY.relative_to(ROOT)}\n")
