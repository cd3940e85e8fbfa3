"""infra/resources.yaml deployed to moto gives what AWS would, TTL included."""

from chalicelib.services import Services


def test_tables_queues_and_bucket_exist(services: Services) -> None:
    s = services.settings
    ddb = services.client("dynamodb")
    tables = ddb.list_tables()["TableNames"]
    assert {s.requests_table_name, s.keys_table_name} <= set(tables)
    services.s3.head_bucket(Bucket=s.bucket_name)
    url = services.sqs.get_queue_url(QueueName=s.interactive_queue_name)["QueueUrl"]
    attrs = services.sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
    assert '"maxReceiveCount":3' in attrs["RedrivePolicy"].replace(" ", "")
    assert "interactive-dlq" in attrs["RedrivePolicy"]


def test_ttl_is_enabled_on_every_expiring_table(services: Services) -> None:
    s = services.settings
    ddb = services.client("dynamodb")
    expiring = (
        s.requests_table_name,
        s.auth_cache_table_name,
        s.limits_table_name,
        s.connections_table_name,
    )
    for table in expiring:
        ttl = ddb.describe_time_to_live(TableName=table)
        assert ttl["TimeToLiveDescription"]["TimeToLiveStatus"] == "ENABLED", table
        assert ttl["TimeToLiveDescription"]["AttributeName"] == "expires_at", table


def test_registry_can_live_in_s3(stage: str) -> None:
    from chalicelib.settings import REPO_ROOT, Settings

    services = Services(
        Settings(stage=stage, registry_path=f"s3://first-{stage}-data/registry/x.json")
    )
    body = (REPO_ROOT / "infra" / "deployments" / "local.json").read_bytes()
    services.s3.put_object(Bucket=f"first-{stage}-data", Key="registry/x.json", Body=body)
    assert "first/tiny-chat" in services.registry.model_ids()
