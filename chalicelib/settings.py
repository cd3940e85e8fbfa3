"""One typed settings object, read once at start.

Explicit arguments beat the environment (``Settings(stage="dev")``); otherwise each field comes
from ``FIRST_<FIELD>`` (e.g. ``FIRST_STAGE``), falling back to the default here. Resource names
derive from the stage so one template (``infra/resources.yaml``) serves every stage. Reading
settings never touches the network: ``chalice package`` imports the app without AWS.
"""

from __future__ import annotations

import json
import os
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

REPO_ROOT = Path(__file__).resolve().parent.parent

# A list read from the environment as JSON (``["a","b"]``) or comma-separated (``a,b``).
StrList = Annotated[list[str], NoDecode]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FIRST_", frozen=True, extra="ignore")

    stage: str = "local"
    region: str = Field(default_factory=lambda: os.environ.get("AWS_DEFAULT_REGION", "us-east-1"))
    home: Path = REPO_ROOT / ".first"
    # A file path, or s3://bucket/key for deployed stages.
    registry_path: str | None = None

    # Interactive requests wait in the API; API Gateway cuts a request at 29 s.
    wait_timeout_s: float = 25.0
    # Bodies beyond this are refused with 413 (Lambda's synchronous payload limit is 6 MB).
    max_body_bytes: int = 6 * 1024 * 1024
    # Payloads/results larger than this go to S3 instead of the DynamoDB item (limit 400 KB).
    inline_limit_bytes: int = 64 * 1024
    # Requests records expire (TTL) after this many seconds.
    request_ttl_s: int = 7 * 24 * 3600
    # Stored Responses API responses (and their input items) expire this long after creation,
    # OpenAI's 30 days (``/v1/responses``, ``previous_response_id``).
    responses_ttl_s: int = 30 * 24 * 3600
    # API key lookups and Globus verdicts are cached per process (a warm Lambda container or the
    # local API) for at most this long: the bound on how late a revocation is seen there.
    auth_cache_ttl_s: float = 60.0

    # Globus Auth (docs/auth.md). Off unless a client id is set: the offline stack uses API keys.
    globus_client_id: str | None = None
    globus_client_secret: SecretStr | None = None
    # Tokens must name this audience (default: the client id, i.e. our resource server)…
    globus_audience: str | None = None
    # …and, when set, carry this scope (e.g. https://auth.globus.org/scopes/<client id>/action_all).
    globus_scope: str | None = None
    # Each rule is off when empty.
    globus_allowed_domains: StrList = Field(default_factory=list)
    globus_policies: StrList = Field(default_factory=list)
    globus_groups: StrList = Field(default_factory=list)
    globus_service_clients: StrList = Field(default_factory=list)
    # Members of these groups (Globus groups, or the groups on an API key) are operators:
    # they may read GET /v1/endpoints. Empty: nobody.
    operator_groups: StrList = Field(default_factory=list)
    # Introspection results are shared through DynamoDB for min(this, token expiry); refusals
    # (inactive tokens) for the shorter time so a bad token does not hammer Globus Auth.
    globus_cache_ttl_s: int = 600
    globus_failure_ttl_s: int = 30
    # `first login` / `first token`: the gateway's Globus native app (a public client id).
    globus_native_client_id: str | None = None

    # Rate limits (docs/auth.md): a JSON file (a path, or s3://bucket/key like the registry);
    # none configured means unlimited.
    limits_path: str | None = None
    # A concurrency counter a crashed process never released stops counting after this long
    # without a new request from that user.
    limits_inflight_ttl_s: int = 900

    # Poller: the SQS visibility timeout is the lease on a request. A heartbeat extends every
    # held message each third of it, so a message that reappears means its poller died, and a
    # peer takes the request over within this many seconds: well inside the API's wait.
    poller_visibility_timeout_s: int = 10
    # Requests one poller holds at once: running, or waiting in its fair line for a slot. Far
    # above the endpoints' slots, so a flood is received here rather than left in SQS ahead of
    # everyone else's requests (the fair-share bound holds for floods up to this size).
    poller_max_inflight: int = 128
    poller_wait_time_s: int = 20
    # A request whose endpoints are all at capacity waits in its poller's line this long for a
    # slot (its lease kept alive) before it is put back on the queue with a backoff.
    poller_slot_wait_s: float = 900.0
    # Endpoint slots a poller leases (chalicelib/poller/capacity.py): a lease not renewed this
    # long (its poller died) is taken back by a peer, about when the dead poller's messages
    # reappear; a slot unused this long goes back to the shared count.
    poller_slot_lease_s: float = 10.0
    poller_slot_linger_s: float = 1.0
    # While requests wait for endpoint slots (the endpoints are the bottleneck), the poller
    # waits up to this long to share SQS calls: notices to one API process go out together and
    # new messages are received several at a time. Idle or below capacity it never waits.
    poller_share_wait_s: float = 0.1
    # How long a request waits in the poller while no endpoint serving its model is online
    # (starting up, restarting, circuit open) before it is retried with back-off.
    poller_offline_wait_s: float = 30.0
    # Circuit breaker per endpoint (chalicelib/router.py): consecutive infrastructure failures
    # that open it, the cooldown before one probe; an endpoint unheard of this long is offline.
    circuit_failures_to_open: int = 3
    circuit_cooldown_s: float = 30.0
    endpoint_stale_s: float = 30.0
    # A task not finished this long after it was submitted counts as the endpoint's failure: the
    # request moves to another deployment (the task, which cannot be cancelled, is abandoned).
    task_timeout_s: float = 600.0
    # Warm-ups (POST /v1/models/{model}/warm, a request for a cold model): one not done within
    # warm_timeout_s has failed; while an endpoint does not say how long a load takes, one is
    # expected to take model_start_estimate_s (what Retry-After is based on).
    warm_timeout_s: float = 600.0
    model_start_estimate_s: float = 60.0
    # After this many receives a message goes to the DLQ (redrive policy in the template).
    max_receive_count: int = 3
    # Globus Compute's hosted service refuses a submission over 5 MB and a task result over
    # 512 KB (its docs/limits.rst; the SDK states no byte figure, so the stricter, decimal
    # reading). The poller's executors refuse a task over the first before sending it; the
    # offline endpoint enforces both as the service does (offline/globus_engine.py: the body
    # the SDK POSTs; the SDK-serialized result, checked by the engine's execute_task). NB: the
    # limits page has said 10MB for both since its April 2024 revision, and the endpoint's own
    # result check defaults to 10 * 1024 * 1024 (docs/hpc.md "Limits"): these are stricter.
    compute_submit_limit_bytes: int = 5 * 1000 * 1000
    compute_result_limit_bytes: int = 512 * 1000
    # Interactive request bodies and results over this travel by S3 instead of inside the task
    # (presigned URLs: HPC nodes hold no AWS credentials; docs/hpc.md "Large requests").
    # Off, they travel inline and fail at those limits as they would on the service.
    compute_offload: bool = True
    compute_offload_over_bytes: int = 256 * 1024
    # Reply queues (chalicelib/stores/replies.py, sweeper.py): a live listener refreshes its
    # queue's last-used tag this often; the hourly sweep deletes queues unused for this long.
    reply_queue_touch_s: float = 3600.0
    reply_queue_idle_s: float = 24 * 3600.0

    # Batch (docs/operations.md "Batch"): lines per shard (one HPC task each); shards of all
    # batches one batch worker runs at once (batch's share of endpoint capacity, so a running
    # batch never takes every worker from interactive requests); tries per shard before its
    # lines go to the error file; the batch worker's lease on a batch message. Rows per pass:
    # lines the transformers engine generates in one ``generate`` call (memory grows with it).
    batch_shard_lines: int = 64
    batch_max_inflight_shards: int = 1
    batch_shard_attempts: int = 3
    batch_rows_per_pass: int = 32
    batch_visibility_timeout_s: int = 30
    # OpenAI's limits per input file.
    batch_max_requests: int = 50_000
    batch_max_file_bytes: int = 200 * 1024 * 1024
    # Files one user may keep (uploads and batch results; 0: no limit): all fit one list page.
    files_max_per_user: int = 10_000
    # Presigned URLs (shard inputs/outputs for HPC nodes; uploads and downloads of big files).
    presigned_url_ttl_s: int = 6 * 3600
    # File contents up to this size are answered in the response; larger ones redirect to S3.
    file_content_inline_bytes: int = 5 * 1024 * 1024

    # Images in chat (chalicelib/images.py; README "Images"): per request, bytes and pixels per
    # image, Pillow's names of the formats taken, and the https URL prefixes the API may fetch
    # (empty: none; data URLs and file ids need no list). 16.7 M pixels decode to 50 MB as RGB.
    image_max_per_request: int = 8
    image_max_bytes: int = 10 * 1024 * 1024
    image_max_pixels: int = 4096 * 4096
    image_formats: StrList = Field(default_factory=lambda: ["PNG", "JPEG", "WEBP", "GIF"])
    image_url_allow: StrList = Field(default_factory=list)

    local_endpoint_url: str = "http://127.0.0.1:8765"
    # The offline compute endpoint's per-stack secret (offline.stack makes one for each stack).
    local_endpoint_token: SecretStr | None = None

    # Streaming over the WebSocket API (issue 8; docs/operations.md). The capability tokens the
    # poller mints for streaming tasks are signed with this key (a secret-store value on AWS,
    # random per stack offline); without it the WebSocket routes refuse to stream.
    stream_key: SecretStr | None = None
    # Secret settings may name an SSM parameter or a Secrets Manager secret instead of holding
    # the value (chalicelib/secrets.py: ssm:/first/prod/stream-key); deployed stages set this
    # so a literal secret is refused at start.
    require_secret_references: bool = False
    # Conversation affinity and cache isolation (chalicelib/affinity.py; docs/operations.md
    # "Affinity"). Off: every request is routed by warmth, capacity and load alone. The key
    # hashes user + model + conversation keyed with affinity_key (else stream_key); with no
    # prompt_cache_key or X-Session-ID the conversation is the first affinity_prefix_chars of
    # the prompt. A home takes at most affinity_load_bound times its share of the requests in
    # flight; a move is its key's home for affinity_ttl_s. Every vLLM request carries a
    # cache_salt per user, or per group for members of cache_salt_groups (first match).
    affinity: bool = True
    affinity_key: SecretStr | None = None
    affinity_prefix_chars: int = Field(default=2048, ge=1)
    affinity_load_bound: float = Field(default=1.25, ge=1.0)
    affinity_ttl_s: float = 3600.0
    cache_salt_groups: StrList = Field(default_factory=list)
    # Where HPC functions push their chunks: the relay route of this API (…/relay/push).
    stream_relay_url: str | None = None
    # The WebSocket API's management endpoint (https://{api-id}.execute-api.{region}
    # .amazonaws.com/{stage} on AWS; the local API server offline).
    websocket_management_url: str | None = None
    # A capability token outlives any generation; API Gateway closes a connection after 2 h.
    stream_token_ttl_s: int = 2 * 3600
    connection_ttl_s: int = 2 * 3600
    # The HPC function's sender pushes what it has every this many ms, or at this many tokens.
    stream_flush_ms: float = 50.0
    stream_flush_tokens: int = 16
    # Streamed requests one user may have in flight at once, over all their connections (429
    # beyond; 0: no limit). Each holds a GPU slot for as long as the client keeps reading.
    stream_max_per_user: int = 16
    # The relay reads a streaming request's status at most this often per request and process:
    # pushes after the request finished are refused (410) within this bound, and a stream's
    # pushes cost one read per this many seconds, not one each.
    stream_status_recheck_s: float = 1.0

    # Usage and metrics (docs/operations.md "Metrics", "Usage"). A usage record per finished
    # request is kept this long (TTL); long-running processes (poller, batch worker) flush their
    # EMF metrics this often, and the API after every request.
    usage_ttl_s: int = 400 * 24 * 3600
    metrics_namespace: str = "FIRST"
    metrics_flush_interval_s: float = 10.0

    # Resource name overrides; default to first-<stage>-<name>.
    requests_table: str | None = None
    keys_table: str | None = None
    auth_cache_table: str | None = None
    limits_table: str | None = None
    endpoints_table: str | None = None
    connections_table: str | None = None
    interactive_queue: str | None = None
    bucket: str | None = None
    reply_queue_prefix: str | None = None
    files_table: str | None = None
    batches_table: str | None = None
    batch_queue: str | None = None
    drop_bucket: str | None = None
    usage_table: str | None = None
    responses_table: str | None = None

    @field_validator(
        "globus_allowed_domains",
        "globus_policies",
        "globus_groups",
        "globus_service_clients",
        "operator_groups",
        "image_formats",
        "image_url_allow",
        "cache_salt_groups",
        mode="before",
    )
    @classmethod
    def _str_list(cls, value: Any) -> Any:
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                return json.loads(text)
            return [part.strip() for part in text.split(",") if part.strip()]
        return value

    @model_validator(mode="after")
    def _offload_under_the_limits(self) -> Settings:
        # A result just under the threshold travels inline: it must fit the result limit.
        over = self.compute_offload_over_bytes
        if self.compute_offload and over >= self.compute_result_limit_bytes:
            raise ValueError(
                f"compute_offload_over_bytes ({over}) must be under compute_result_limit_bytes"
                f" ({self.compute_result_limit_bytes})"
            )
        return self

    @property
    def local_endpoint_token_value(self) -> str:
        return self.local_endpoint_token.get_secret_value() if self.local_endpoint_token else ""

    @property
    def globus_enabled(self) -> bool:
        return bool(self.globus_client_id)

    def resource(self, name: str) -> str:
        return f"first-{self.stage}-{name}"

    @cached_property
    def requests_table_name(self) -> str:
        return self.requests_table or self.resource("requests")

    @cached_property
    def keys_table_name(self) -> str:
        return self.keys_table or self.resource("keys")

    @cached_property
    def auth_cache_table_name(self) -> str:
        return self.auth_cache_table or self.resource("auth-cache")

    @cached_property
    def limits_table_name(self) -> str:
        return self.limits_table or self.resource("limits")

    @cached_property
    def endpoints_table_name(self) -> str:
        return self.endpoints_table or self.resource("endpoints")

    @cached_property
    def connections_table_name(self) -> str:
        return self.connections_table or self.resource("connections")

    @property
    def stream_key_bytes(self) -> bytes:
        return self.stream_key.get_secret_value().encode() if self.stream_key else b""

    @property
    def affinity_key_bytes(self) -> bytes:
        secret = self.affinity_key or self.stream_key
        return secret.get_secret_value().encode() if secret else b""

    @cached_property
    def interactive_queue_name(self) -> str:
        return self.interactive_queue or self.resource("interactive")

    @cached_property
    def bucket_name(self) -> str:
        return self.bucket or self.resource("data")

    @cached_property
    def reply_queue_name_prefix(self) -> str:
        return self.reply_queue_prefix or self.resource("reply")

    @cached_property
    def responses_table_name(self) -> str:
        return self.responses_table or self.resource("responses")

    @cached_property
    def files_table_name(self) -> str:
        return self.files_table or self.resource("files")

    @cached_property
    def batches_table_name(self) -> str:
        return self.batches_table or self.resource("batches")

    @cached_property
    def batch_queue_name(self) -> str:
        return self.batch_queue or self.resource("batch")

    @cached_property
    def drop_bucket_name(self) -> str:
        return self.drop_bucket or self.resource("drop")

    @cached_property
    def usage_table_name(self) -> str:
        return self.usage_table or self.resource("usage")

    @cached_property
    def registry_file(self) -> Path:
        if self.registry_path:
            return Path(self.registry_path)
        return REPO_ROOT / "infra" / "deployments" / f"{self.stage}.json"

    @cached_property
    def limits_source(self) -> str | None:
        """``limits_path``, else ``infra/limits/<stage>.json`` if that exists, else None."""
        if self.limits_path:
            return self.limits_path
        default = REPO_ROOT / "infra" / "limits" / f"{self.stage}.json"
        return str(default) if default.exists() else None
