"""The API's composition root (``app.py``): the gateway, authentication, the fleet view,
the dashboard, streaming over the WebSocket API and the batch routes, on the shared building
blocks of ``chalicelib.root.Root``.

Nothing here runs at import: ``chalice package`` imports ``app.py`` with no AWS endpoint, and a
cold Lambda pays only for what its first request uses.
"""

from __future__ import annotations

from functools import cached_property
from typing import TYPE_CHECKING

from chalicelib.access import uses_groups
from chalicelib.auth.apikeys import ApiKeyAuthenticator
from chalicelib.auth.chain import ChainAuthenticator
from chalicelib.dashboard.data import Dashboard
from chalicelib.fleet import Fleet
from chalicelib.gateway import Gateway
from chalicelib.images import ImageBounds, ImageResolver
from chalicelib.metrics import MetricsRecorder
from chalicelib.root import Root
from chalicelib.stores.connections import ConnectionStore
from chalicelib.stores.replies import ReplyListener, process_queue_name
from chalicelib.stores.responses import ResponseStore
from chalicelib.stores.sweeper import ReplyQueueSweeper

if TYPE_CHECKING:
    from chalicelib.batch.api import BatchApi
    from chalicelib.jobs import Jobs
    from chalicelib.responses_api import ResponsesApi
    from chalicelib.streaming.relay import Relay
    from chalicelib.streaming.service import StreamService


class Services(Root):
    @cached_property
    def api_metrics(self) -> MetricsRecorder:
        return self.metrics("first-api")

    @cached_property
    def reply_listener(self) -> ReplyListener:
        name = process_queue_name(self.settings.reply_queue_name_prefix)
        return ReplyListener(self.sqs, name, touch_s=self.settings.reply_queue_touch_s)

    @cached_property
    def reply_sweeper(self) -> ReplyQueueSweeper:
        s = self.settings
        return ReplyQueueSweeper(self.sqs, s.reply_queue_name_prefix, idle_s=s.reply_queue_idle_s)

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
            # Always: a streamed request's hold (stream_max_per_user) is given back through it.
            limit_store=self.limit_store,
            fleet=self.fleet,
            images=self.images,
        )

    @cached_property
    def jobs(self) -> Jobs:
        from chalicelib.jobs import Jobs

        return Jobs(
            settings=self.settings,
            registry=self.registry,
            gateway=self.gateway,
            requests=self.requests,
            blobs=self.blobs,
            files=self.file_store,
            limit_store=self.limit_store if self.limits is not None else None,
        )

    @cached_property
    def images(self) -> ImageResolver:
        """Image references in requests, checked and made data URLs (chalicelib/images.py)."""
        return ImageResolver(
            ImageBounds.from_settings(self.settings), self.file_store, self.objects
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

    @cached_property
    def connections(self) -> ConnectionStore:
        table = self.dynamodb.Table(self.settings.connections_table_name)
        return ConnectionStore(table, ttl_s=self.settings.connection_ttl_s)

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
            logger=get_logger("first-streams"),
            # Always: stream_max_per_user counts in the limits table, rate limits or not.
            limit_store=self.limit_store,
            recorder=self.api_metrics,
        )

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
