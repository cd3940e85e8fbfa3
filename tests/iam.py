"""Test helper: which AWS calls our code makes, and whether an IAM policy document allows them.

``CallRecorder`` hooks a boto3 ``Session``'s botocore events (register it before the session
makes its clients): ``before-parameter-build`` keeps each call's parameters, ``before-call`` (the
call is about to be sent, so a call its server refuses is recorded too) records the service, the
operation and the resources it names, as ARNs. ``iam_action`` maps an operation to the IAM action AWS checks (not always its name:
``DeleteMessageBatch`` is authorised as ``sqs:DeleteMessage``). ``allows`` evaluates the
``Allow``/``Deny`` statements of a policy with ``fnmatch`` on Action (case-insensitive, as IAM)
and Resource, and ``StringEquals``/``StringLike`` conditions against a given context; other
conditions and ``NotAction``/``NotResource`` are not modelled and are refused.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any
from urllib.parse import unquote, urlsplit

import boto3

ACCOUNT = "123456789012"

# Operations whose IAM action is not ``<service>:<operation>``.
IAM_ACTIONS: dict[tuple[str, str], str] = {
    ("sqs", "DeleteMessageBatch"): "sqs:DeleteMessage",
    ("sqs", "SendMessageBatch"): "sqs:SendMessage",
    ("sqs", "ChangeMessageVisibilityBatch"): "sqs:ChangeMessageVisibility",
    ("s3", "HeadObject"): "s3:GetObject",
    ("s3", "ListObjects"): "s3:ListBucket",
    ("s3", "ListObjectsV2"): "s3:ListBucket",
    ("s3", "HeadBucket"): "s3:ListBucket",
    # The WebSocket API's management API: one action for posting, describing and closing;
    # the resource names the HTTP method (``resources``).
    ("apigatewaymanagementapi", "PostToConnection"): "execute-api:ManageConnections",
    ("apigatewaymanagementapi", "GetConnection"): "execute-api:ManageConnections",
    ("apigatewaymanagementapi", "DeleteConnection"): "execute-api:ManageConnections",
}


# TransactWriteItems is no IAM action: each item is authorised as one of these.
_TRANSACT_ACTIONS = {
    "Update": "UpdateItem",
    "Put": "PutItem",
    "Delete": "DeleteItem",
    "ConditionCheck": "ConditionCheckItem",
}


def iam_action(service: str, operation: str) -> str:
    return IAM_ACTIONS.get((service, operation), f"{service}:{operation}")


@dataclass(frozen=True)
class Call:
    service: str
    operation: str
    resource: str

    @property
    def action(self) -> str:
        return iam_action(self.service, self.operation)


def _tables(params: dict[str, Any]) -> list[str]:
    names: list[str] = []
    if "TableName" in params:
        index = params.get("IndexName")
        names.append(params["TableName"] + (f"/index/{index}" if index else ""))
    names += list(params.get("RequestItems") or {})
    for item in params.get("TransactItems") or []:
        names += [op["TableName"] for op in item.values() if "TableName" in op]
    return names


def connection_arn(region: str, url: str, method: str) -> str:
    """``…:{api-id}/{stage}/{METHOD}/@connections/{id}`` for a management API request URL.

    On AWS the client's endpoint is ``https://{api-id}.execute-api.{region}.amazonaws.com/{stage}``;
    a local emulation (``offline.ws_gateway``) has no API id, and is named ``local``.
    """
    parts = urlsplit(url)
    host = parts.hostname or ""
    api_id = host.split(".", 1)[0] if ".execute-api." in host else "local"
    stage, _, connection = unquote(parts.path).partition("/@connections/")
    return (
        f"arn:aws:execute-api:{region}:{ACCOUNT}:{api_id}/{stage.strip('/')}/{method}"
        f"/@connections/{connection}"
    )


def resources(
    service: str, region: str, params: dict[str, Any], request: dict[str, Any] | None = None
) -> list[str]:
    """The ARNs a call names (what IAM matches ``Resource`` against); ``request`` is botocore's
    request dict (its ``url`` and ``method``), which the management API's ARNs are made of."""
    if service == "dynamodb":
        return [f"arn:aws:dynamodb:{region}:{ACCOUNT}:table/{t}" for t in _tables(params)]
    if service == "sqs":
        name = params.get("QueueName") or str(params.get("QueueUrl", "")).rsplit("/", 1)[-1]
        # ListQueues names no queue: IAM authorises it on "*" only.
        return [f"arn:aws:sqs:{region}:{ACCOUNT}:{name}" if name else "*"]
    if service == "s3":
        bucket = params.get("Bucket", "")
        key = params.get("Key")
        return [f"arn:aws:s3:::{bucket}/{key}" if key is not None else f"arn:aws:s3:::{bucket}"]
    if service == "ssm" and "Name" in params:
        return [f"arn:aws:ssm:{region}:{ACCOUNT}:parameter/{params['Name'].lstrip('/')}"]
    if service == "secretsmanager" and "SecretId" in params:
        secret = params["SecretId"]
        if secret.startswith("arn:"):
            return [secret]
        # A secret's ARN ends in a random "-AbCdEf" that a name does not carry: policies match it
        # with a trailing "*".
        return [f"arn:aws:secretsmanager:{region}:{ACCOUNT}:secret:{secret}-AbCdEf"]
    if service == "apigatewaymanagementapi" and request is not None:
        return [connection_arn(region, request["url"], request["method"])]
    return ["*"]


class CallRecorder:
    def __init__(self, session: boto3.Session) -> None:
        self._calls: list[Call] = []
        self._lock = threading.Lock()
        session.events.register("before-parameter-build", self._keep_params)
        session.events.register("before-call", self._record)

    @property
    def calls(self) -> list[Call]:
        with self._lock:
            return list(self._calls)

    def _keep_params(self, params: dict[str, Any], context: dict[str, Any], **_: Any) -> None:
        context["recorded_params"] = dict(params)

    def _record(
        self, model: Any, params: dict[str, Any], context: dict[str, Any], **_: Any
    ) -> None:
        # before-call's ``params`` is botocore's request dict (url, method, body); the call's
        # own parameters were kept by ``_keep_params``.
        request, params = params, context.get("recorded_params") or {}
        service = model.service_model.service_name
        region = context.get("client_region") or "us-east-1"
        if model.name == "TransactWriteItems":
            # IAM authorises each item of a transaction as its own action on its own table.
            found = [
                Call(service, _TRANSACT_ACTIONS[kind], r)
                for item in params.get("TransactItems") or []
                for kind, op in item.items()
                for r in resources(service, region, op)
            ]
        else:
            found = [
                Call(service, model.name, r) for r in resources(service, region, params, request)
            ]
            if (service, model.name) == ("sqs", "CreateQueue") and params.get("tags"):
                # Tags on creation need sqs:TagQueue as well as sqs:CreateQueue.
                found += [Call(service, "TagQueue", r) for r in resources(service, region, params)]
        with self._lock:
            self._calls += found


def _listed(value: str | list[str] | None) -> list[str]:
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value)


def _conditions_hold(statement: dict[str, Any], context: dict[str, str]) -> bool:
    """``StringEquals`` / ``StringLike`` only; a key missing from the context fails (IAM)."""
    for operator, keys in statement.get("Condition", {}).items():
        if operator not in ("StringEquals", "StringLike"):
            raise ValueError(f"statement {statement.get('Sid')} uses condition {operator}")
        for key, wanted in keys.items():
            value = context.get(key)
            if value is None:
                return False
            if operator == "StringEquals" and value not in _listed(wanted):
                return False
            if operator == "StringLike" and not any(fnmatchcase(value, w) for w in _listed(wanted)):
                return False
    return True


def _matches(
    statement: dict[str, Any], action: str, resource: str, context: dict[str, str]
) -> bool:
    unsupported = {"NotAction", "NotResource", "NotPrincipal"} & set(statement)
    if unsupported:
        raise ValueError(f"statement {statement.get('Sid')} uses {sorted(unsupported)}")
    return (
        any(
            fnmatchcase(action.lower(), pattern.lower()) for pattern in _listed(statement["Action"])
        )
        and any(fnmatchcase(resource, pattern) for pattern in _listed(statement["Resource"]))
        and _conditions_hold(statement, context)
    )


def allows(
    policy: dict[str, Any], action: str, resource: str, context: dict[str, str] | None = None
) -> bool:
    """True when an ``Allow`` statement matches and no ``Deny`` does (IAM's order). ``context``
    holds the request's condition keys (e.g. ``kms:ViaService``)."""
    matching = [s for s in policy["Statement"] if _matches(s, action, resource, context or {})]
    return any(s["Effect"] == "Allow" for s in matching) and not any(
        s["Effect"] == "Deny" for s in matching
    )
