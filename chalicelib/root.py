"""The building blocks every process's composition root shares, each made lazily from
``Settings``: the AWS clients, the secrets, the registry, the stores and queues.

Each process has its own root on top of this one, and builds only what it uses:

- the API (``app.py``; its scheduled functions too, which EventBridge runs as Lambdas of the
  same app, ``offline.scheduler`` offline): ``chalicelib.services.Services``;
- the poller: ``chalicelib.poller.root``;
- the batch worker: ``chalicelib.batch.root``;
- the ``first`` command line: this ``Root`` itself.

Nothing here imports the API's modules (gateway, fleet, dashboard, authenticators), and nothing
runs at import: ``chalice package`` imports ``app.py`` with no AWS endpoint, and a cold Lambda
pays only for what its first request uses. boto3 finds moto or LocalStack through
``AWS_ENDPOINT_URL``; no code branches on "local".
"""

from __future__ import annotations

import os
from functools import cached_property
from typing import TYPE_CHECKING, Any, Literal

import boto3
from botocore.config import Config

from chalicelib.limits import LimitsConfig
from chalicelib.metrics import MetricsRecorder, usage_write_failed
from chalicelib.registry import Registry
from chalicelib.router import CircuitPolicy
from chalicelib.secrets import SecretResolver, SecretService, resolve_all, with_references
from chalicelib.settings import Settings
from chalicelib.stores.batches import BatchStore
from chalicelib.stores.blobs import BlobStore
from chalicelib.stores.endpoints import EndpointStore
from chalicelib.stores.files import FileStore
from chalicelib.stores.keys import KeyStore
from chalicelib.stores.limits import LimitStore
from chalicelib.stores.objects import ObjectStore
from chalicelib.stores.queue import RequestQueue
from chalicelib.stores.replies import ReplySender
from chalicelib.stores.requests import RequestStore
from chalicelib.stores.usage import UsageStore, UsageWriter
from chalicelib.stores.websocket import ConnectionPoster

if TYPE_CHECKING:
    # Type-only (requirements-dev.txt): the Lambda needs nothing beyond boto3.
    from mypy_boto3_dynamodb import DynamoDBClient, DynamoDBServiceResource
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_sqs import SQSClient

# Long polls hold a connection for up to 20 s; many threads share each client.
CLIENT_CONFIG = Config(
    retries={"mode": "standard", "max_attempts": 3},
    max_pool_connections=64,
    read_timeout=30,
    tcp_keepalive=True,
)
# The AWS services FIRST calls; boto3's stubs pick a client's type by the literal name.
AwsService = Literal["cloudformation", "dynamodb", "s3", "sqs"]


class Root:
    def __init__(self, settings: Settings | None = None, session: boto3.Session | None = None):
        self._given_settings = settings or Settings()
        self._session = session or boto3.Session(region_name=self._given_settings.region)
        self._secrets = SecretResolver(self._secret_client)

    @cached_property
    def settings(self) -> Settings:
        """The settings; a secret given by reference is fetched when first read
        (chalicelib/secrets.py), so reading any other setting needs no AWS."""
        return with_references(self._given_settings, self._secrets)

    def resolve_secrets(self) -> None:
        """Fetch every referenced secret now: a process's start fails on a missing one."""
        resolve_all(self.settings, self._secrets)

    def _secret_client(self, service: SecretService) -> Any:
        return self._session.client(service, config=CLIENT_CONFIG)

    def client(self, service: AwsService) -> Any:
        return self._session.client(service, config=CLIENT_CONFIG)

    @cached_property
    def dynamodb(self) -> DynamoDBServiceResource:
        return self._session.resource("dynamodb", config=CLIENT_CONFIG)

    @cached_property
    def dynamodb_client(self) -> DynamoDBClient:
        return self._session.client("dynamodb", config=CLIENT_CONFIG)

    @cached_property
    def sqs(self) -> SQSClient:
        return self._session.client("sqs", config=CLIENT_CONFIG)

    @cached_property
    def s3(self) -> S3Client:
        return self._session.client("s3", config=CLIENT_CONFIG)

    @cached_property
    def registry(self) -> Registry:
        env = {**os.environ, "FIRST_HOME": str(self.settings.home)}
        source = self.settings.registry_path or str(self.settings.registry_file)
        return Registry.from_text(self._read_text(source), env)

    @cached_property
    def limits(self) -> LimitsConfig | None:
        """The rate-limit configuration (a file or s3:// object, like the registry), if any."""
        source = self.settings.limits_source
        return LimitsConfig.parse(self._read_text(source)) if source else None

    def _read_text(self, source: str) -> str:
        """A configuration file's text: a local path, or ``s3://bucket/key`` for deployed
        stages (operators edit it without a redeploy; a Lambda package holds only ``app.py``
        and ``chalicelib/``)."""
        if source.startswith("s3://"):
            bucket, _, key = source.removeprefix("s3://").partition("/")
            return str(self.s3.get_object(Bucket=bucket, Key=key)["Body"].read().decode())
        with open(source, encoding="utf-8") as f:
            return f.read()

    @cached_property
    def limit_store(self) -> LimitStore:
        return LimitStore(self.dynamodb.Table(self.settings.limits_table_name))

    @cached_property
    def requests(self) -> RequestStore:
        return RequestStore(
            self.dynamodb_client,
            self.settings.requests_table_name,
            ttl_s=self.settings.request_ttl_s,
        )

    @cached_property
    def usage(self) -> UsageStore:
        return UsageStore(
            self.dynamodb_client, self.settings.usage_table_name, ttl_s=self.settings.usage_ttl_s
        )

    def usage_writer(self, recorder: MetricsRecorder) -> UsageWriter:
        """A background writer of usage records; records it could not write are counted on
        ``recorder`` (``UsageWriteErrors``)."""
        return UsageWriter(self.usage, on_failure=lambda n: usage_write_failed(recorder, n))

    def metrics(self, service: str) -> MetricsRecorder:
        return MetricsRecorder(service, namespace=self.settings.metrics_namespace)

    @cached_property
    def endpoint_store(self) -> EndpointStore:
        return EndpointStore(self.dynamodb_client, self.settings.endpoints_table_name)

    @cached_property
    def keys(self) -> KeyStore:
        return KeyStore(self.dynamodb.Table(self.settings.keys_table_name))

    @cached_property
    def blobs(self) -> BlobStore:
        return BlobStore(self.s3, self.settings.bucket_name)

    @cached_property
    def interactive_queue(self) -> RequestQueue:
        url = self.sqs.get_queue_url(QueueName=self.settings.interactive_queue_name)["QueueUrl"]
        return RequestQueue(self.sqs, url)

    @cached_property
    def reply_sender(self) -> ReplySender:
        return ReplySender(self.sqs)

    @cached_property
    def circuit_policy(self) -> CircuitPolicy:
        s = self.settings
        return CircuitPolicy(
            failures_to_open=s.circuit_failures_to_open,
            cooldown_s=s.circuit_cooldown_s,
            stale_s=s.endpoint_stale_s,
            warm_timeout_s=s.warm_timeout_s,
            start_estimate_s=s.model_start_estimate_s,
        )

    @cached_property
    def connection_poster(self) -> ConnectionPoster:
        # The management endpoint is per WebSocket API: from settings, not AWS_ENDPOINT_URL.
        endpoint = self.settings.websocket_management_url
        client = self._session.client(
            "apigatewaymanagementapi", endpoint_url=endpoint, config=CLIENT_CONFIG
        )
        return ConnectionPoster(client)

    @cached_property
    def file_store(self) -> FileStore:
        return FileStore(self.dynamodb.Table(self.settings.files_table_name))

    @cached_property
    def batch_store(self) -> BatchStore:
        return BatchStore(self.dynamodb.Table(self.settings.batches_table_name))

    @cached_property
    def objects(self) -> ObjectStore:
        """The data bucket, for files, shards and outputs (streamed, presigned)."""
        return ObjectStore(self.s3, self.settings.bucket_name)

    @cached_property
    def drop_objects(self) -> ObjectStore:
        return ObjectStore(self.s3, self.settings.drop_bucket_name)

    @cached_property
    def batch_queue(self) -> RequestQueue:
        url = self.sqs.get_queue_url(QueueName=self.settings.batch_queue_name)["QueueUrl"]
        return RequestQueue(self.sqs, url)
