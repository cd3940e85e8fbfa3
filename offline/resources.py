"""Deploy ``infra/resources.yaml`` to the local AWS endpoint (moto server or LocalStack).

The template is the one source of truth. moto's CloudFormation creates the tables, queues
(with redrive) and bucket but leaves TTL disabled, so this applies every table's
``TimeToLiveSpecification`` with direct calls afterwards; ``tests`` check the result.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, cast

import yaml

from chalicelib.settings import REPO_ROOT

TEMPLATE = REPO_ROOT / "infra" / "resources.yaml"


class _CfnLoader(yaml.SafeLoader):
    """Reads CloudFormation short-form tags (!Sub, !Ref, !GetAtt) as plain values."""


def _tag(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> Any:
    if isinstance(node, yaml.ScalarNode):
        return {suffix: loader.construct_scalar(node)}
    if isinstance(node, yaml.SequenceNode):
        return {suffix: loader.construct_sequence(node)}
    if isinstance(node, yaml.MappingNode):
        return {suffix: loader.construct_mapping(node)}
    raise yaml.constructor.ConstructorError(
        None, None, f"unexpected node for !{suffix}", node.start_mark
    )


_CfnLoader.add_multi_constructor("!", _tag)


def load_template(path: Path = TEMPLATE) -> dict[str, Any]:
    template = yaml.load(path.read_text(), Loader=_CfnLoader)  # noqa: S506 - SafeLoader subclass
    if not isinstance(template, dict):
        raise ValueError(f"{path}: a CloudFormation template is a mapping")
    return template


def deploy(
    cloudformation: Any,
    dynamodb: Any,
    *,
    stage: str,
    parameters: dict[str, str] | None = None,
    template: Path = TEMPLATE,
    timeout_s: float = 60.0,
) -> dict[str, str]:
    """Create (or reuse) the stack ``first-<stage>``; returns its outputs."""
    name = f"first-{stage}"
    params = [{"ParameterKey": "Stage", "ParameterValue": stage}] + [
        {"ParameterKey": k, "ParameterValue": v} for k, v in (parameters or {}).items()
    ]
    existing = _stack(cloudformation, name)
    if existing is None or existing["StackStatus"].startswith("DELETE"):
        cloudformation.create_stack(
            StackName=name, TemplateBody=template.read_text(), Parameters=params
        )
    deadline = time.monotonic() + timeout_s
    while True:
        stack = _stack(cloudformation, name)
        status = stack["StackStatus"] if stack else "MISSING"
        if stack and status.endswith("_COMPLETE") and "ROLLBACK" not in status:
            break
        if "FAILED" in status or "ROLLBACK" in status or time.monotonic() > deadline:
            raise RuntimeError(f"stack {name} did not deploy: {status}")
        time.sleep(0.2)
    _apply_ttl(dynamodb, load_template(template), stage)
    return {o["OutputKey"]: o["OutputValue"] for o in stack.get("Outputs", [])}


def _stack(cloudformation: Any, name: str) -> dict[str, Any] | None:
    try:
        return cast("dict[str, Any]", cloudformation.describe_stacks(StackName=name)["Stacks"][0])
    except cloudformation.exceptions.ClientError:
        return None


def _apply_ttl(dynamodb: Any, template: dict[str, Any], stage: str) -> None:
    for resource in template["Resources"].values():
        if resource["Type"] != "AWS::DynamoDB::Table":
            continue
        props = resource["Properties"]
        spec = props.get("TimeToLiveSpecification")
        if not spec:
            continue
        table = props["TableName"]["Sub"].replace("${Stage}", stage)
        current = dynamodb.describe_time_to_live(TableName=table)["TimeToLiveDescription"]
        if current.get("TimeToLiveStatus") in ("ENABLED", "ENABLING"):
            continue
        dynamodb.update_time_to_live(
            TableName=table,
            TimeToLiveSpecification={"AttributeName": spec["AttributeName"], "Enabled": True},
        )
