"""Composition root: builds every adapter from ``Settings`` once, lazily.

Nothing here runs at import: ``chalice package`` imports ``app.py`` with no AWS endpoint, and a
cold Lambda pays only for what its first request uses. boto3 finds moto or LocalStack through
``AWS_ENDPOINT_URL``; no code branches on "local".
"""

from __future__ import annotations

import os
from functools import cached_property
from typing import TYPE_CHECKING, Any, Literal

import boto3
from botocore.config import Config

from chalicelib.access import uses_groups
from chalicelib.auth.apikeys import ApiKeyAuthenticator
from chalicelib.auth.chain import ChainAuthenticator
from chalicelib.dashboard.data import Dashboard
from chalicelib.fleet import Fleet
from chalicelib.gateway import Gateway
from chalicelib.limits import LimitsConfig
from chalicelib.metrics import MetricsRecorder, usage_write_failed
from chalicelib.registry import Registry
from chalicelib.router import CircuitPolicy
from chalicelib.secrets import SecretResolver, SecretService, resolve_all, with_references
from chalicelib.settings import Settings
from chalicelib.stores.batches import BatchStore
from chalicelib.stores.blobs import BlobStore
from chalicelib.stores.connections import ConnectionStore
from chalicelib.stores.endpoints import EndpointStore
from chalicelib.stores.files import FileStore
from chalicelib.stores.keys import KeyStore
from chalicelib.stores.limits import LimitStore
from chalicelib.stores.objects import ObjectStore
from chalicelib.stores.queue import RequestQueue
from chalicelib.stores.replies import ReplyListener, ReplySender, process_queue_name
from chalicelib.stores.requests import RequestStore
from chalicelib.stores.responses import ResponseStore
from chalicelib.stores.sweeper import ReplyQueueSweeper
from chalicelib.stores.usage import UsageStore, UsageWriter
from chalicelib.stores.websocket import ConnectionPoster

if TYPE_CHECKING:
    from chalicelib.batch.api import BatchApi
    from chalicelib.responses_api import ResponsesApi
    from chalicelib.streaming.notifier import StreamNotifier
    from chalicelib.streaming.relay import Relay
    from chalicelib.streaming.service import StreamService

# Long polls hold a connection for up to 20 s; many threads share each client.
_CLIENT_CONFIG = Config(
    retries={"mode": "standard", "max_attempts": 3},
    max_pool_connections=64,
    read_timeout=30,
    tcp_keepalive=True,
)
# The AWS services FIRST calls; boto3's stubs pick a client's type by the literal name.
AwsService = Literal["cloudformation", "dynamodb", "s3", "sqs"]


class Services:
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
        return self._session.client(service, config=_CLIENT_CONFIG)

    def client(self, service: AwsService) -> Any:
        return self._session.client(service, config=_CLIENT_CONFIG)

    @cached_property
    def dynamodb(self) -> Any:
        return self._session.resource("dynamodb", config=_CLIENT_CONFIG)

    @cached_property
    def dynamodb_client(self) -> Any:
        return self.client("dynamodb")

    @cached_property
    def sqs(self) -> Any:
        return self.client("sqs")

    @cached_property
    def s3(self) -> Any:
        return self.client("s3")

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
    def api_metrics(self) -> MetricsRecorder:
        return self.metrics("first-api")

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
    def reply_listener(self) -> ReplyListener:
        name = process_queue_name(self.settings.reply_queue_name_prefix)
        return ReplyListener(self.sqs, name, touch_s=self.settings.reply_queue_touch_s)

    @cached_property
    def reply_sweeper(self) -> ReplyQueueSweeper:
        s = self.settings
        return ReplyQueueSweeper(self.sqs, s.reply_queue_name_prefix, idle_s=s.reply_queue_idle_s)

    @cached_property
    def reply_sender(self) -> ReplySender:
        return ReplySender(self.sqs)

    @cached_property
    def api_key_authenticator(self) -> ApiKeyAuthenticator:
        return ApiKeyAuthenticator(self.keys, cache_ttl_s=self.settings.auth_cache_ttl_s)

    @cached_property
    def authenticator(self) -> ChainAuthenticator:
        globus = None
        if self.settings.globus_enabled:
            from chalicelib.auth.globus import globus_authenticator

            # Memberships are looked up only when something decides by group.
            rules = [self.registry.access(m) for m in self.registry.model_ids()]
            group_rules = uses_groups(rules) or bool(self.limits and self.limits.groups)
            globus = globus_authenticator(self.settings, self.dynamodb, group_rules=group_rules)
        return ChainAuthenticator(self.api_key_authenticator, globus)

    @cached_property
    def gateway(self) -> Gateway:
        return Gateway(
            settings=self.settings,
            registry=self.registry,
            requests=self.requests,
            queue=self.interactive_queue,
            blobs=self.blobs,
            replies=self.reply_listener,
            limits_config=self.limits,
            limit_store=self.limit_store if self.limits is not None else None,
            fleet=self.fleet,
        )

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
    def fleet(self) -> Fleet:
        return Fleet(
            self.registry,
            self.endpoint_store,
            self.circuit_policy,
            queue_depth=self.interactive_queue.depth,
        )

    @cached_property
    def dashboard(self) -> Dashboard:
        return Dashboard(self.fleet, self.interactive_queue, self.requests, self.usage)

    # -- streaming over the WebSocket API (chalicelib/streaming) ------------------------------

    @cached_property
    def connections(self) -> ConnectionStore:
        table = self.dynamodb.Table(self.settings.connections_table_name)
        return ConnectionStore(table, ttl_s=self.settings.connection_ttl_s)

    @cached_property
    def connection_poster(self) -> ConnectionPoster:
        # The management endpoint is per WebSocket API: from settings, not AWS_ENDPOINT_URL.
        endpoint = self.settings.websocket_management_url
        client = self._session.client(
            "apigatewaymanagementapi", endpoint_url=endpoint, config=_CLIENT_CONFIG
        )
        return ConnectionPoster(client)

    @cached_property
    def relay(self) -> Relay:
        from chalicelib.logs import get_logger
        from chalicelib.streaming.relay import Relay

        return Relay(
            self.settings.stream_key_bytes,
            self.connection_poster,
            self.api_metrics,
            requests=self.requests,
            recheck_s=self.settings.stream_status_recheck_s,
            logger=get_logger("first-relay"),
        )

    @cached_property
    def streams(self) -> StreamService:
        from chalicelib.logs import get_logger
        from chalicelib.streaming.service import StreamService

        return StreamService(
            settings=self.settings,
            authenticator=self.authenticator,
            connections=self.connections,
            poster=self.connection_poster,
            gateway=self.gateway,
            registry=self.registry,
            requests=self.requests,
            queue=self.interactive_queue,
            blobs=self.blobs,
            logger=get_logger("first-streams"),
            # Always: stream_max_per_user counts in the limits table, rate limits or not.
            limit_store=self.limit_store,
            recorder=self.api_metrics,
        )

    def stream_notifier(self) -> StreamNotifier | None:
        """The poller's streaming side, or None when streaming is not configured."""
        from chalicelib.logs import get_logger
        from chalicelib.streaming.notifier import StreamNotifier

        s = self.settings
        if not (s.stream_key and s.stream_relay_url and s.websocket_management_url):
            return None
        return StreamNotifier(s, self.connection_poster, get_logger("first-poller"))

    # ----- the Responses API (chalicelib/responses_api.py) --------------------------------

    @cached_property
    def response_store(self) -> ResponseStore:
        return ResponseStore(self.dynamodb.Table(self.settings.responses_table_name))

    @cached_property
    def responses(self) -> ResponsesApi:
        from chalicelib.responses_api import ResponsesApi

        return ResponsesApi(
            settings=self.settings,
            gateway=self.gateway,
            registry=self.registry,
            store=self.response_store,
            blobs=self.blobs,
        )

    # ----- batch (chalicelib/batch) ------------------------------------------------------

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

    @cached_property
    def batch_api(self) -> BatchApi:
        from chalicelib.batch.api import BatchApi
        from chalicelib.logs import get_logger

        return BatchApi(
            settings=self.settings,
            files=self.file_store,
            batches=self.batch_store,
            objects=self.objects,
            queue=self.batch_queue,
            logger=get_logger("first-api"),
            recorder=self.api_metrics,
        )
