"""Register the HPC functions with Globus Compute and record their ids in the registry file.

An operator runs this (through ``first functions register``) once per endpoint and again after
``hpc_functions`` changes. ``ComputeSerializer`` pickles a module-level function by reference
(module and name), so what runs on the node is the ``hpc_functions`` installed there: keep the
node's checkout at the version that was registered.

A user-supplied module (``first functions register --module MOD``, docs/hpc.md "Your own
function as a job") is registered the same way: its ``FUNCTIONS`` ({name: function}) under the
endpoint, and each of its ``JOBS`` (the registry's function declarations: ``name``,
``function``, ``input_schema``, …) declared in the registry's top-level ``functions`` with this
endpoint among its ``endpoints``. The module must be installed on the node too.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol


class FunctionRegistrar(Protocol):
    """The part of ``globus_compute_sdk.Client`` this module uses."""

    def register_function(self, function: Callable[..., Any], /, **kwargs: Any) -> str: ...


class RegistryError(ValueError):
    """The registry file cannot be read, or has no endpoint of the given name."""


def _load(registry_path: Path) -> dict[str, Any]:
    try:
        data = json.loads(registry_path.read_text())
    except (OSError, ValueError) as exc:
        raise RegistryError(f"cannot read registry {registry_path}: {exc}") from exc
    if not isinstance(data, dict) or not isinstance(data.get("endpoints"), list):
        raise RegistryError(f"{registry_path}: expected an object with an 'endpoints' list")
    return data


def _endpoint(data: dict[str, Any], name: str, registry_path: Path) -> dict[str, Any]:
    for endpoint in data["endpoints"]:
        if isinstance(endpoint, dict) and endpoint.get("name") == name:
            return endpoint
    names = [e.get("name") for e in data["endpoints"] if isinstance(e, dict)]
    raise RegistryError(f"{registry_path}: no endpoint named {name!r} (have {names})")


def _write_atomically(path: Path, text: str) -> None:
    # A crash mid-write must not leave the registry half-written: the poller reads it.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as out:
            out.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def register_functions(
    registry_path: Path,
    endpoint_name: str,
    client: FunctionRegistrar,
    *,
    functions: Mapping[str, Callable[..., Any]] | None = None,
    jobs: list[dict[str, Any]] | None = None,
) -> dict[str, str]:
    """Register every HPC function and store the ids under the endpoint's ``functions``.

    ``client`` is a ``globus_compute_sdk.Client`` (or anything with its ``register_function``).
    ``functions`` defaults to ``hpc_functions.FUNCTIONS``. The rest of the registry file is kept
    as it was, rewritten with a 2-space indent. Returns ``{function name: function id}``.
    """
    if functions is None:
        # Imported here: chalicelib is packaged into the Lambda, hpc_functions need not be.
        from hpc_functions import FUNCTIONS

        functions = FUNCTIONS
    data = _load(registry_path)
    endpoint = _endpoint(data, endpoint_name, registry_path)  # fail before registering anything
    for job in jobs or []:
        if not isinstance(job, dict) or job.get("function") not in functions:
            raise RegistryError(f"a job must name one of the module's FUNCTIONS: {job!r}")

    ids = {name: str(client.register_function(fn)) for name, fn in functions.items()}

    existing = endpoint.get("functions")
    endpoint["functions"] = {**(existing if isinstance(existing, dict) else {}), **ids}
    declared = data.setdefault("functions", [])
    for job in jobs or []:
        known = next((d for d in declared if d.get("name") == job["name"]), None)
        if known is None:
            declared.append({**job, "endpoints": [endpoint_name]})
        else:
            endpoints = [e for e in known.get("endpoints", []) if e != endpoint_name]
            known.update({**job, "endpoints": [*endpoints, endpoint_name]})
    _write_atomically(registry_path, json.dumps(data, indent=2) + "\n")
    return ids
