"""What the batch routes and the batch worker share: a batch's caller as its record holds it,
and one JSONL line as written to a shard or an output file."""

from __future__ import annotations

import json
from typing import Any, Literal

from chalicelib.auth.principal import Principal


def principal_fields(principal: Principal) -> dict[str, Any]:
    """What the worker needs of the caller to apply the models' access rules later."""
    return {
        "id": principal.id,
        "username": principal.username,
        "kind": principal.kind,
        "idp_domain": principal.idp_domain,
        "groups": sorted(principal.groups),
    }


def principal_from(fields: dict[str, Any]) -> Principal:
    kind: Literal["user", "service"] = "service" if fields.get("kind") == "service" else "user"
    return Principal(
        id=str(fields["id"]),
        username=str(fields.get("username") or fields["id"]),
        kind=kind,
        idp_domain=fields.get("idp_domain"),
        groups=frozenset(fields.get("groups") or ()),
    )


def dumps_line(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode() + b"\n"
