"""Secrets from AWS's secret stores, named by reference in the setting that holds the secret.

Any secret setting (``Settings`` fields of type ``SecretStr``: ``FIRST_GLOBUS_CLIENT_SECRET``,
``FIRST_STREAM_KEY``, ``FIRST_LOCAL_ENDPOINT_TOKEN``) and the Globus Compute SDK's own
``GLOBUS_COMPUTE_CLIENT_SECRET`` may hold a reference instead of the value:

    ssm:/first/prod/stream-key                   SSM Parameter Store (SecureString, decrypted)
    secretsmanager:first/prod/globus-secret      Secrets Manager (SecretString; a name or ARN)

``Services.settings`` holds each referenced secret as a ``ReferencedSecret``: no AWS call is made
until its value is first read, so importing the app (``chalice package`` does, with no AWS)
stays offline. Long-running processes call ``Services.resolve_secrets()`` at start (the poller,
the batch worker), so a missing secret stops them at once; a Lambda container reads each on its
first use. Each reference is fetched once per process and cached. A stage that sets
``FIRST_REQUIRE_SECRET_REFERENCES`` refuses a literal secret. Errors (``SecretConfigError``,
naming the setting and the reference): the parameter or secret does not exist, access is
denied, or a literal was given where a reference is required.
"""

from __future__ import annotations

import os
from collections.abc import Callable, MutableMapping
from typing import Any, Literal

from botocore.exceptions import ClientError
from pydantic import SecretStr

from chalicelib.settings import Settings

SCHEMES = ("ssm:", "secretsmanager:")
SecretService = Literal["ssm", "secretsmanager"]
# Read from the environment by the Globus Compute SDK itself (the poller's Client()).
SDK_SECRET_ENV = ("GLOBUS_COMPUTE_CLIENT_SECRET",)


class SecretConfigError(RuntimeError):
    """A secret setting cannot be resolved; the process must not start without it."""


def is_reference(value: str) -> bool:
    return value.startswith(SCHEMES)


def secret_fields() -> list[str]:
    """The names of the ``Settings`` fields that hold secrets."""
    return [
        name
        for name, field in Settings.model_fields.items()
        if "SecretStr" in str(field.annotation)
    ]


class SecretResolver:
    """Fetches referenced secrets (clients made on first use, so a process without references
    makes no AWS call) and remembers each answer for the life of the process."""

    def __init__(self, client: Callable[[SecretService], Any]) -> None:
        self._client = client
        self._clients: dict[str, Any] = {}
        self._cache: dict[str, str] = {}

    def resolve(self, setting: str, reference: str) -> str:
        if reference not in self._cache:
            self._cache[reference] = self._fetch(setting, reference)
        return self._cache[reference]

    def _service(self, name: SecretService) -> Any:
        if name not in self._clients:
            self._clients[name] = self._client(name)
        return self._clients[name]

    def _fetch(self, setting: str, reference: str) -> str:
        scheme, _, name = reference.partition(":")
        if not name:
            raise SecretConfigError(f"{setting}: {reference!r} names no parameter or secret")
        try:
            if scheme == "ssm":
                out = self._service("ssm").get_parameter(Name=name, WithDecryption=True)
                return str(out["Parameter"]["Value"])
            out = self._service("secretsmanager").get_secret_value(SecretId=name)
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "Error")
            raise SecretConfigError(f"{setting}: cannot read {reference} ({code})") from exc
        if "SecretString" not in out:
            raise SecretConfigError(f"{setting}: {reference} is binary; store it as a string")
        return str(out["SecretString"])


class ReferencedSecret(SecretStr):
    """A secret setting that names where its value is; fetched on the first read of it."""

    def __init__(self, setting: str, reference: str, resolver: SecretResolver) -> None:
        super().__init__(reference)  # truthy, and shown masked, before it is fetched
        self.setting = setting
        self.reference = reference
        self._resolver = resolver

    def get_secret_value(self) -> str:
        return self._resolver.resolve(self.setting, self.reference)


def with_references(settings: Settings, resolver: SecretResolver) -> Settings:
    """``settings`` with each referenced secret made a ``ReferencedSecret`` (no AWS call)."""
    updates: dict[str, SecretStr] = {}
    for field in secret_fields():
        value: SecretStr | None = getattr(settings, field)
        if value is None:
            continue
        text = value.get_secret_value()
        setting = f"FIRST_{field.upper()}"
        if is_reference(text):
            updates[field] = ReferencedSecret(setting, text, resolver)
        elif settings.require_secret_references:
            raise SecretConfigError(f"{setting} must be an ssm: or secretsmanager: reference")
    return settings.model_copy(update=updates) if updates else settings


def resolve_all(
    settings: Settings, resolver: SecretResolver, environ: MutableMapping[str, str] = os.environ
) -> None:
    """Fetch every referenced secret now (a process's start); referenced SDK secrets in
    ``environ`` are replaced there by their values (the SDK reads them from the environment)."""
    for field in secret_fields():
        value = getattr(settings, field)
        if isinstance(value, ReferencedSecret):
            value.get_secret_value()
    for name in SDK_SECRET_ENV:
        text = environ.get(name, "")
        if is_reference(text):
            environ[name] = resolver.resolve(name, text)
        elif text and settings.require_secret_references:
            raise SecretConfigError(f"{name} must be an ssm: or secretsmanager: reference")
