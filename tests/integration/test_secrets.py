"""Secret settings named by reference (``ssm:`` / ``secretsmanager:``) are read from the moto
server's Parameter Store and Secrets Manager once, at start; a missing one stops the process with
its name; deployed stages hold references only, and every production policy that runs the code
may read its stage's secrets and nothing else."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid

import boto3
import pytest
from pydantic import SecretStr

from chalicelib.secrets import SecretConfigError, SecretResolver, resolve_all, secret_fields
from chalicelib.services import Services
from chalicelib.settings import REPO_ROOT, Settings
from tests.iam import CallRecorder, allows

POLICIES = [
    REPO_ROOT / ".chalice" / "policy-prod.json",
    REPO_ROOT / ".chalice" / "policy-prod-sweeper.json",
    REPO_ROOT / "infra" / "iam" / "poller-policy.json",
    REPO_ROOT / "infra" / "iam" / "batch-worker-policy.json",
]


@pytest.fixture
def secrets(stage: str) -> dict[str, str]:
    """A SecureString parameter and a Secrets Manager secret under this stage's names."""
    tag = uuid.uuid4().hex[:6]
    session = boto3.Session(region_name="us-east-1")
    stream_key = f"stream-key-{tag}-" + "k" * 32
    session.client("ssm").put_parameter(
        Name=f"/first/{stage}/stream-key-{tag}", Value=stream_key, Type="SecureString"
    )
    globus = f"globus-secret-{tag}"
    session.client("secretsmanager").create_secret(
        Name=f"first/{stage}/globus-{tag}", SecretString=globus
    )
    return {
        "stream_ref": f"ssm:/first/{stage}/stream-key-{tag}",
        "stream_key": stream_key,
        "globus_ref": f"secretsmanager:first/{stage}/globus-{tag}",
        "globus": globus,
    }


def recorded_services(settings: Settings) -> tuple[Services, CallRecorder]:
    session = boto3.Session(region_name="us-east-1")
    recorder = CallRecorder(session)
    return Services(settings, session=session), recorder


def test_references_resolve_once_from_both_stores(stage: str, secrets: dict[str, str]) -> None:
    settings = Settings(
        stage=stage,
        stream_key=SecretStr(secrets["stream_ref"]),
        # Two settings naming one parameter: it is read once.
        local_endpoint_token=SecretStr(secrets["stream_ref"]),
        globus_client_secret=SecretStr(secrets["globus_ref"]),
    )
    services, recorder = recorded_services(settings)
    assert services.settings.stage == stage and services.settings.stream_key is not None
    assert recorder.calls == [], "nothing is fetched before a secret is read (import stays offline)"
    assert services.settings.stream_key_bytes == secrets["stream_key"].encode()
    assert services.settings.local_endpoint_token_value == secrets["stream_key"]
    secret = services.settings.globus_client_secret
    assert secret is not None and secret.get_secret_value() == secrets["globus"]
    services.settings.stream_key_bytes  # noqa: B018 - read again: no further call
    made = sorted(c.action for c in recorder.calls)
    assert made == ["secretsmanager:GetSecretValue", "ssm:GetParameter"]


def test_the_globus_compute_sdk_secret_is_resolved_in_the_environment(
    stage: str, secrets: dict[str, str]
) -> None:
    environ = {"GLOBUS_COMPUTE_CLIENT_SECRET": secrets["globus_ref"], "OTHER": "ssm:/not/a/secret"}
    session = boto3.Session(region_name="us-east-1")
    resolve_all(Settings(stage=stage), SecretResolver(lambda name: session.client(name)), environ)
    assert environ == {
        "GLOBUS_COMPUTE_CLIENT_SECRET": secrets["globus"],
        "OTHER": "ssm:/not/a/secret",
    }


def test_a_literal_is_used_as_is_unless_the_stage_requires_references(stage: str) -> None:
    services, recorder = recorded_services(
        Settings(stage=stage, stream_key=SecretStr("literal-key"))
    )
    assert services.settings.stream_key_bytes == b"literal-key"
    assert recorder.calls == []  # no reference, no AWS call
    strict = Services(
        Settings(stage=stage, stream_key=SecretStr("literal"), require_secret_references=True)
    )
    with pytest.raises(SecretConfigError, match="FIRST_STREAM_KEY must be an ssm: or"):
        _ = strict.settings


@pytest.mark.parametrize("reference", ["ssm:/first/nowhere/x", "secretsmanager:first/nowhere/x"])
def test_a_missing_secret_is_a_startup_error_naming_it(stage: str, reference: str) -> None:
    services = Services(Settings(stage=stage, globus_client_secret=SecretStr(reference)))
    assert services.settings.globus_client_secret is not None  # not fetched yet
    with pytest.raises(SecretConfigError) as caught:
        services.resolve_secrets()
    message = str(caught.value)
    assert "FIRST_GLOBUS_CLIENT_SECRET" in message and reference in message
    assert "NotFound" in message


def test_a_poller_with_a_missing_secret_does_not_start(stage: str) -> None:
    env = {
        **os.environ,
        "FIRST_STAGE": stage,
        "FIRST_STREAM_KEY": f"ssm:/first/{stage}/missing",
        "PYTHONPATH": str(REPO_ROOT),
    }
    out = subprocess.run(
        [sys.executable, "-m", "chalicelib.poller.main"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode != 0
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("chalicelib.secrets.SecretConfigError: FIRST_STREAM_KEY: cannot read")


def test_deployed_stages_hold_references_not_secrets() -> None:
    config = json.loads((REPO_ROOT / ".chalice" / "config.json").read_text())
    secret_names = {f"FIRST_{f.upper()}" for f in secret_fields()}
    assert secret_names >= {"FIRST_STREAM_KEY", "FIRST_GLOBUS_CLIENT_SECRET"}
    for name, stage in config["stages"].items():
        env = stage.get("environment_variables", {})
        assert env.get("FIRST_REQUIRE_SECRET_REFERENCES") == "true", name
        for key in secret_names & set(env):
            assert env[key].startswith(("ssm:/first/", "secretsmanager:first/")), (name, key)


def test_every_process_may_read_its_stage_secrets_and_no_others(
    stage: str, secrets: dict[str, str]
) -> None:
    settings = Settings(
        stage=stage,
        stream_key=SecretStr(secrets["stream_ref"]),
        globus_client_secret=SecretStr(secrets["globus_ref"]),
    )
    services, recorder = recorded_services(settings)
    services.resolve_secrets()
    calls = {
        (
            c.action,
            c.resource.replace(f"/first/{stage}/", "/first/prod/").replace(
                f":first/{stage}/", ":first/prod/"
            ),
        )
        for c in recorder.calls
    }
    assert {a for a, _ in calls} == {"ssm:GetParameter", "secretsmanager:GetSecretValue"}
    key = "arn:aws:kms:us-east-1:123456789012:key/0d1e"
    for path in POLICIES:
        policy = json.loads(path.read_text())
        assert [c for c in calls if not allows(policy, *c)] == [], path.name
        for action, resource in calls:  # another stage's secrets are out of reach
            other = resource.replace("first/prod/", "first/dev/")
            assert not allows(policy, action, other), (path.name, other)
        # SecureString and secrets under a customer managed key: decrypted through SSM or
        # Secrets Manager only, never by a direct kms:Decrypt.
        for service in ("ssm", "secretsmanager"):
            via = {"kms:ViaService": f"{service}.us-east-1.amazonaws.com"}
            assert allows(policy, "kms:Decrypt", key, via), path.name
        assert not allows(policy, "kms:Decrypt", key), path.name
