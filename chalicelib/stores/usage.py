"""The ``usage`` table: one record per finished request (or batch shard); never prompt or output.

Keys (``infra/resources.yaml``)::

    owner (HASH)      sk (RANGE) = "<finished_at in ms, 13 digits>#<request id>"
    index by-day:     day_shard (HASH) = "<YYYY-MM-DD>#<n>", sk (RANGE)

One user's usage over a range is one ``Query`` on the table (``owner``, ``sk`` between the
range's ends). Everyone's (operators) is ``DAY_SHARDS`` Queries per UTC day of the range on the
``by-day`` index, never a ``Scan``: ``n`` is the request id's CRC32 mod ``DAY_SHARDS``, so one
day's writes are spread over that many index partitions rather than crowding one.

``UsageWriter`` writes records off the request's path: ``add`` returns at once and a thread sends
them with ``BatchWriteItem`` (25 a call; ``UnprocessedItems`` retried twice). A record that still
cannot be written is logged and counted (``failures``, and ``on_failure`` for a metric); the
request it describes has already been answered and is never failed for it.
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal

from aws_lambda_powertools import Logger

from chalicelib.logs import get_logger
from chalicelib.stores import StoreError
from chalicelib.stores.batcher import BackgroundBatcher
from chalicelib.stores.dynamo import from_wire, to_wire

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient
    from mypy_boto3_dynamodb.type_defs import WriteRequestTypeDef

DAY_SHARDS = 4
INDEX = "by-day"
# The widest range one summary reads: a month of one user is one Query's pages; of everyone,
# 4 Queries a day.
MAX_RANGE_S = 31 * 24 * 3600
GroupBy = Literal["model", "day", "user", "function"]
GROUP_BY: tuple[GroupBy, ...] = ("model", "day", "user", "function")
# BatchWriteItem takes at most 25 puts.
BATCH = 25
UNPROCESSED_RETRIES_S = (0.05, 0.2)
TOTALS = ("requests", "prompt_tokens", "completion_tokens", "total_tokens", "errors", "cancelled")


class UsageRangeError(StoreError):
    """A summary range the store will not read (empty, reversed, or wider than the maximum)."""


@dataclass(frozen=True)
class Usage:
    """What one finished request (or one batch shard of ``requests`` lines) used."""

    owner: str
    request_id: str
    model: str
    # interactive | stream | batch
    mode: str
    # The route: chat_completions | completions | embeddings | responses | messages | a job's
    function: str
    # completed | failed | cancelled (a stream its client left: its tokens count)
    status: str
    finished_at: float
    # The Globus Compute endpoint that ran it (None: it never reached one).
    endpoint: str | None = None
    status_code: int = 200
    error_code: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    requests: int = 1
    errors: int = 0
    cancelled: int = 0
    created_at: float | None = None
    queue_ms: float | None = None
    engine_ms: float | None = None
    duration_ms: float | None = None
    ttft_ms: float | None = None

    def item(self, ttl_s: int) -> dict[str, Any]:
        day = day_of(self.finished_at)
        shard = zlib.crc32(self.request_id.encode()) % DAY_SHARDS
        fields = {k: v for k, v in asdict(self).items() if v is not None}
        return {
            **fields,
            "sk": sort_key(int(self.finished_at * 1000), self.request_id),
            "total_tokens": self.prompt_tokens + self.completion_tokens,
            "day": day,
            "day_shard": f"{day}#{shard}",
            "expires_at": int(self.finished_at) + ttl_s,
        }


def day_of(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d")


def sort_key(ms: int, suffix: str = "") -> str:
    return f"{ms:013d}#{suffix}"


def days_between(start: int, end: int) -> list[str]:
    """The UTC days that [start, end) touches."""
    first = datetime.fromtimestamp(start, UTC).date()
    last = datetime.fromtimestamp(max(start, end - 1), UTC).date()
    return [(first + timedelta(days=i)).isoformat() for i in range((last - first).days + 1)]


def summarize(
    items: list[dict[str, Any]], group_by: GroupBy | None
) -> tuple[dict[str, int], list[dict[str, Any]]]:
    """Totals over ``items`` and, with ``group_by``, one bucket per model, day or user."""
    totals = dict.fromkeys(TOTALS, 0)
    buckets: dict[str, dict[str, Any]] = {}
    field = "owner" if group_by == "user" else group_by
    for item in items:
        values = {k: int(item.get(k) or 0) for k in TOTALS}
        for k, v in values.items():
            totals[k] += v
        if field is None:
            continue
        key = str(item.get(field) or "")
        bucket = buckets.setdefault(key, {str(group_by): key, **dict.fromkeys(TOTALS, 0)})
        for k, v in values.items():
            bucket[k] += v
    return totals, [buckets[k] for k in sorted(buckets)]


class UsageStore:
    """On the low-level DynamoDB client, like the requests table (the poller writes here)."""

    # Only what a summary adds up.
    _PROJECTION = (
        "#o, sk, model, #d, #f, requests, errors, cancelled, prompt_tokens, completion_tokens,"
        " total_tokens"
    )

    def __init__(
        self, client: DynamoDBClient, table_name: str, *, ttl_s: int = 400 * 24 * 3600
    ) -> None:
        self._ddb = client
        self.table_name = table_name
        self.ttl_s = ttl_s

    def put_many(self, records: list[Usage]) -> list[Usage]:
        """Write up to 25 records in one ``BatchWriteItem``; the ones DynamoDB left unwritten
        after the retries (throttled). Raises what the call raises."""
        # By key: one BatchWriteItem may not name an item twice.
        pending = {(r.owner, r.item(self.ttl_s)["sk"]): r for r in records}
        for delay in (*UNPROCESSED_RETRIES_S, None):
            requests: list[WriteRequestTypeDef] = [
                {"PutRequest": {"Item": to_wire(r.item(self.ttl_s))}} for r in pending.values()
            ]
            out = self._ddb.batch_write_item(RequestItems={self.table_name: requests})
            left = (out.get("UnprocessedItems") or {}).get(self.table_name) or []
            unwritten = {
                (x["PutRequest"]["Item"]["owner"]["S"], x["PutRequest"]["Item"]["sk"]["S"])
                for x in left
            }
            pending = {k: v for k, v in pending.items() if k in unwritten}
            if not pending or delay is None:
                break
            time.sleep(delay)
        return list(pending.values())

    def records(self, start: int, end: int, owner: str | None = None) -> list[dict[str, Any]]:
        """Every record finished in [start, end) (unix seconds): one owner's, or everyone's."""
        check_range(start, end)
        low, high = sort_key(start * 1000), sort_key(end * 1000 - 1, "~")
        if owner is not None:
            return list(self._query(None, "#o", owner, low, high))
        keys = [f"{day}#{n}" for day in days_between(start, end) for n in range(DAY_SHARDS)]
        with ThreadPoolExecutor(min(8, len(keys)), thread_name_prefix="usage-query") as pool:
            pages = pool.map(lambda k: list(self._query(INDEX, "day_shard", k, low, high)), keys)
            return [item for page in pages for item in page]

    def summary(
        self, start: int, end: int, group_by: GroupBy | None = None, owner: str | None = None
    ) -> dict[str, Any]:
        """Totals (requests, prompt/completion/total tokens, errors) over [start, end), and
        buckets by ``group_by``; ``owner=None`` sums every user's (operators)."""
        totals, data = summarize(self.records(start, end, owner), group_by)
        return {
            "object": "usage",
            "start": start,
            "end": end,
            "user": owner,
            "group_by": group_by,
            "totals": totals,
            "data": data,
        }

    def _query(
        self, index: str | None, key_name: str, key: str, low: str, high: str
    ) -> Iterator[dict[str, Any]]:
        names = {"#o": "owner", "#d": "day", "#f": "function"}
        if key_name != "#o":
            names["#k"] = key_name
        params: dict[str, Any] = {
            "TableName": self.table_name,
            "KeyConditionExpression": f"{'#o' if key_name == '#o' else '#k'} = :k"
            " AND sk BETWEEN :low AND :high",
            "FilterExpression": "expires_at >= :now",
            "ProjectionExpression": self._PROJECTION,
            "ExpressionAttributeNames": names,
            "ExpressionAttributeValues": to_wire(
                {":k": key, ":low": low, ":high": high, ":now": int(time.time())}
            ),
        }
        if index is not None:
            params["IndexName"] = index
        while True:
            out = self._ddb.query(**params)
            for item in out.get("Items") or []:
                yield from_wire(item)
            if not out.get("LastEvaluatedKey"):
                return
            params["ExclusiveStartKey"] = out["LastEvaluatedKey"]


def check_range(start: int, end: int) -> None:
    if end <= start:
        raise UsageRangeError(f"end ({end}) must be after start ({start}).")
    if end - start > MAX_RANGE_S:
        raise UsageRangeError(f"The range is at most {MAX_RANGE_S} seconds (31 days).")


class UsageWriter(BackgroundBatcher[Usage]):
    """Usage records written in the background, 25 to a ``BatchWriteItem``."""

    def __init__(
        self,
        store: UsageStore,
        *,
        max_delay_s: float = 1.0,
        logger: Logger | None = None,
        on_failure: Callable[[int], None] | None = None,
    ) -> None:
        self._store = store
        super().__init__(
            size=BATCH,
            max_delay_s=max_delay_s,
            logger=logger or get_logger("first-usage"),
            name="usage-writer",
            on_failure=on_failure,
        )

    def _write(self, batch: list[Usage]) -> int:
        try:
            left = self._store.put_many(batch)
        except Exception:  # noqa: BLE001 - usage is lost, the requests were answered
            self._log.exception(
                "usage write failed",
                extra={"records": len(batch), "table": self._store.table_name},
            )
            return len(batch)
        if left:
            self._log.error(
                "usage records left unwritten",
                extra={
                    "records": len(left),
                    "table": self._store.table_name,
                    "request_ids": [r.request_id for r in left],
                },
            )
        return len(left)
