"""Deploy ``infra/resources.yaml`` to the local AWS endpoint (moto server or LocalStack).

The template is the one source of truth. moto's CloudFormation creates the tables, queues
(with redrive) and bucket but leaves TTL disabled and ignores a bucket's
``NotificationConfiguration``, so this applies every table's ``TimeToLiveSpecification`` and
every bucket's queue notifications (the drop folder) with direct calls afterwards; ``tests``
check the result.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Literal, cast

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
    s3: Any = None,
    sqs: Any = None,
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
    s3 = s3 or _like(cloudformation, "s3")
    _apply_notifications(s3, sqs or _like(cloudformation, "sqs"), load_template(template), stage)
    _apply_bucket_protection(s3, load_template(template), stage)
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


def _like(client: Any, service: Literal["s3", "sqs"]) -> Any:
    """A client for ``service`` at the same endpoint and region as ``client``."""
    import boto3

    return boto3.client(
        service, region_name=client.meta.region_name, endpoint_url=client.meta.endpoint_url
    )


def _name(value: Any, stage: str) -> str:
    return str(value["Sub"] if isinstance(value, dict) else value).replace("${Stage}", stage)


def _apply_notifications(s3: Any, sqs: Any, template: dict[str, Any], stage: str) -> None:
    """Each bucket's ``QueueConfigurations`` (queues named by ``!GetAtt <Queue>.Arn``)."""
    resources = template["Resources"]
    for resource in resources.values():
        if resource["Type"] != "AWS::S3::Bucket":
            continue
        props = resource["Properties"]
        queues = (props.get("NotificationConfiguration") or {}).get("QueueConfigurations") or []
        if not queues:
            continue
        configs = []
        for q in queues:
            logical = str(q["Queue"]["GetAtt"]).removesuffix(".Arn")
            queue_name = _name(resources[logical]["Properties"]["QueueName"], stage)
            url = sqs.get_queue_url(QueueName=queue_name)["QueueUrl"]
            arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])
            rules = ((q.get("Filter") or {}).get("S3Key") or {}).get("Rules") or []
            config: dict[str, Any] = {
                "QueueArn": arn["Attributes"]["QueueArn"],
                "Events": [q["Event"]],
            }
            if rules:
                config["Filter"] = {
                    "Key": {
                        "FilterRules": [{"Name": r["Name"], "Value": r["Value"]} for r in rules]
                    }
                }
            configs.append(config)
        s3.put_bucket_notification_configuration(
            Bucket=_name(props["BucketName"], stage),
            NotificationConfiguration={"QueueConfigurations": configs},
        )


def _apply_bucket_protection(s3: Any, template: dict[str, Any], stage: str) -> None:
    """Each bucket's public access block, default encryption and ownership controls, which
    moto's CloudFormation skips (AWS and LocalStack apply them from the template already)."""
    for resource in template["Resources"].values():
        if resource["Type"] != "AWS::S3::Bucket":
            continue
        props = resource["Properties"]
        bucket = _name(props["BucketName"], stage)
        if block := props.get("PublicAccessBlockConfiguration"):
            s3.put_public_access_block(Bucket=bucket, PublicAccessBlockConfiguration=block)
        if encryption := props.get("BucketEncryption"):
            rules = [
                {"ApplyServerSideEncryptionByDefault": r["ServerSideEncryptionByDefault"]}
                for r in encryption["ServerSideEncryptionConfiguration"]
            ]
            s3.put_bucket_encryption(
                Bucket=bucket, ServerSideEncryptionConfiguration={"Rules": rules}
            )
        if ownership := props.get("OwnershipControls"):
            s3.put_bucket_ownership_controls(Bucket=bucket, OwnershipControls=ownership)
