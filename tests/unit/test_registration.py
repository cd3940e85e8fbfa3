"""Function registration writes Globus Compute ids into the deployment registry.

The client is a stand-in at the Globus boundary (registering needs a Globus login), but it
builds the same ``FunctionRegistrationData`` the real ``Client.register_function`` sends, so
each function is serialized exactly as it would be for the service.
"""

from __future__ import annotations

import json
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from globus_compute_sdk.sdk.client import FunctionRegistrationData
from globus_compute_sdk.serialize import ComputeSerializer

import hpc_functions
from first_cli.registration import RegistryError, register_functions

EXAMPLE = Path(__file__).resolve().parents[2] / "infra" / "deployments" / "example-hpc.json"


class RecordingClient:
    """``register_function`` as the SDK's Client does it, minus the web call."""

    def __init__(self) -> None:
        self.serializer = ComputeSerializer()
        self.registered: dict[str, dict[str, Any]] = {}

    def register_function(self, function: Callable[..., Any], /, **kwargs: Any) -> str:
        data = FunctionRegistrationData(function=function, serializer=self.serializer, **kwargs)
        function_id = str(uuid.uuid4())
        self.registered[function_id] = data.to_dict()
        return function_id


@pytest.fixture
def registry(tmp_path: Path) -> Path:
    path = tmp_path / "prod.json"
    shutil.copy(EXAMPLE, path)
    return path


def test_registers_every_hpc_function_and_records_its_id(registry: Path) -> None:
    client = RecordingClient()

    ids = register_functions(registry, "polaris", client)

    assert set(ids) == set(hpc_functions.FUNCTIONS)
    endpoint = json.loads(registry.read_text())["endpoints"][0]
    assert endpoint["functions"] == ids
    assert {client.registered[fid]["function_name"] for fid in ids.values()} == set(ids)


def test_registered_functions_survive_compute_serializer(registry: Path) -> None:
    client = RecordingClient()

    ids = register_functions(registry, "polaris", client)

    serializer = ComputeSerializer()
    for name, function_id in ids.items():
        payload = client.registered[function_id]["function_code"]
        restored = serializer.deserialize(serializer.unpack_buffers(payload)[0])
        assert restored is hpc_functions.FUNCTIONS[name]


def test_rest_of_the_registry_is_preserved_with_two_space_indent(registry: Path) -> None:
    before = json.loads(registry.read_text())

    register_functions(registry, "polaris", RecordingClient())

    text = registry.read_text()
    after = json.loads(text)
    after["endpoints"][0]["functions"] = before["endpoints"][0]["functions"]
    assert after == before
    assert text == json.dumps(json.loads(text), indent=2) + "\n"


def test_only_the_named_endpoint_changes_and_other_function_ids_stay(registry: Path) -> None:
    data = json.loads(registry.read_text())
    other = {**data["endpoints"][0], "name": "aurora", "functions": {"health": "keep-me"}}
    data["endpoints"][0]["functions"]["site_probe"] = "existing-id"
    data["endpoints"].append(other)
    registry.write_text(json.dumps(data))

    ids = register_functions(registry, "polaris", RecordingClient())

    polaris, aurora = json.loads(registry.read_text())["endpoints"]
    assert polaris["functions"] == {**ids, "site_probe": "existing-id"}
    assert aurora["functions"] == {"health": "keep-me"}


def test_unknown_endpoint_registers_nothing(registry: Path) -> None:
    client = RecordingClient()
    before = registry.read_text()

    with pytest.raises(RegistryError, match="no endpoint named 'frontier'"):
        register_functions(registry, "frontier", client)

    assert client.registered == {}
    assert registry.read_text() == before


def test_unreadable_registry_is_a_registry_error(tmp_path: Path) -> None:
    with pytest.raises(RegistryError):
        register_functions(tmp_path / "missing.json", "polaris", RecordingClient())


def test_a_user_module_is_registered_and_its_jobs_declared_for_the_endpoint(
    registry: Path,
) -> None:
    from chalicelib.registry import Registry
    from tests.unit import job_module_example as module

    client = RecordingClient()
    ids = register_functions(
        registry, "polaris", client, functions=module.FUNCTIONS, jobs=module.JOBS
    )
    assert set(ids) == {"mean_of"}
    loaded = Registry.load(registry)
    spec = loaded.function("lab/mean-of")
    assert spec is not None and spec.endpoints == ("polaris",)
    assert spec.access is not None and spec.access.groups == {"lab"}
    [(endpoint, deployment)] = loaded.candidates("lab/mean-of", "mean_of")
    assert endpoint.functions["mean_of"] == ids["mean_of"]
    # Registering again (a new version) keeps one declaration.
    register_functions(registry, "polaris", client, functions=module.FUNCTIONS, jobs=module.JOBS)
    assert [f.name for f in Registry.load(registry).functions].count("lab/mean-of") == 1
    # The function runs as a job would: input in, result out.
    task = {"request_id": "r", "engine": {}, "body": {"input": {"values": [1, 2, 3]}}}
    assert module.mean_of(task)["response"] == {"mean": 2.0}


def test_a_job_naming_no_function_of_the_module_registers_nothing(registry: Path) -> None:
    from tests.unit import job_module_example as module

    client = RecordingClient()
    bad = [{**module.JOBS[0], "function": "nope"}]
    with pytest.raises(RegistryError, match="FUNCTIONS"):
        register_functions(registry, "polaris", client, functions=module.FUNCTIONS, jobs=bad)
    assert client.registered == {}
