"""One typed settings object, read once at start.

Explicit arguments beat the environment (``Settings(stage="dev")``); otherwise each field comes
from ``FIRST_<FIELD>`` (e.g. ``FIRST_STAGE``), falling back to the default here. Resource names
derive from the stage so one template (``infra/resources.yaml``) serves every stage. Reading
settings never touches the network: ``chalice package`` imports the app without AWS.
"""

from __future__ import annotations

import os
from functools import cached_property
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

REPO_ROOT = Path(__file__).resolve().parent.parent


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FIRST_", frozen=True, extra="ignore")

    stage: str = "local"
    region: str = Field(default_factory=lambda: os.environ.get("AWS_DEFAULT_REGION", "us-east-1"))
    home: Path = REPO_ROOT / ".first"
    registry_path: Path | None = None

    # Interactive requests wait in the API; API Gateway cuts a request at 29 s.
    wait_timeout_s: float = 25.0
    # Bodies beyond this are refused with 413 (Lambda's synchronous payload limit is 6 MB).
    max_body_bytes: int = 6 * 1024 * 1024
    # Payloads/results larger than this go to S3 instead of the DynamoDB item (limit 400 KB).
    inline_limit_bytes: int = 64 * 1024
    # Requests records expire (TTL) after this many seconds.
    request_ttl_s: int = 7 * 24 * 3600
    # API key lookups are cached per process (a warm Lambda container or the local API).
    auth_cache_ttl_s: float = 60.0

    # Poller: the SQS visibility timeout is the lease on a request; it is extended while the
    # task runs, so a message that reappears means its poller died.
    poller_visibility_timeout_s: int = 30
    poller_max_inflight: int = 32
    poller_wait_time_s: int = 20
    # After this many receives a message goes to the DLQ (redrive policy in the template).
    max_receive_count: int = 3

    local_endpoint_url: str = "http://127.0.0.1:8765"

    # Resource name overrides; default to first-<stage>-<name>.
    requests_table: str | None = None
    keys_table: str | None = None
    interactive_queue: str | None = None
    bucket: str | None = None
    reply_queue_prefix: str | None = None

    def resource(self, name: str) -> str:
        return f"first-{self.stage}-{name}"

    @cached_property
    def requests_table_name(self) -> str:
        return self.requests_table or self.resource("requests")

    @cached_property
    def keys_table_name(self) -> str:
        return self.keys_table or self.resource("keys")

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
    def registry_file(self) -> Path:
        return self.registry_path or REPO_ROOT / "infra" / "deployments" / f"{self.stage}.json"
