"""The ``requests`` table: one item per request; status moves only forward, by conditional writes.

``queued → dispatched → completed | failed | cancelled``. ``claim`` may re-claim a ``dispatched``
request: the SQS visibility timeout is the lease, so a message that reappears means its poller
died, and the new holder takes over (``attempt`` + 1). ``complete``/``fail``/``cancel`` only
succeed from a non-terminal state, so a redelivered message never completes a request twice.
``cancelled`` is a stream stopped before its end (its client went away): it keeps the result of
the tokens that ran, and their usage.

The API does not write the record of an interactive request it can answer at once: its queue
message carries the record (``new``), and the poller's ``claim`` writes it, claimed, in one
call. The API writes it itself (``put_new``, if it is not there yet) when the request outlives
the first read-back of its wait or is answered without a result, so a request id handed to a
client always names a record.

Until it is terminal a record carries ``pending_shard``, which puts it in the sparse index
``pending`` (``pending_shard`` → ``created_at``): the oldest unfinished request, whose SQS message
is the oldest the queue still holds, is a one-item Query per shard (``oldest_pending``).
"""

from __future__ import annotations

import random
import time
from typing import TYPE_CHECKING, Any, Literal, Required, TypedDict, cast

from botocore.exceptions import ClientError

from chalicelib.stores import StoreError
from chalicelib.stores.dynamo import condition_failed, from_wire, old_item, to_wire

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

TERMINAL = ("completed", "failed", "cancelled")
PENDING_INDEX = "pending"
# Sparse: a job's record carries ``job_owner`` (``mark_job``); a user's jobs, newest first.
JOBS_INDEX = "jobs"
# A request the API has not answered this long has its record written by the API (its first
# read-back of the record, chalicelib/gateway.py), if the poller's claim did not write it first.
API_WRITES_AFTER_S = 5.0
# The index's partitions: creates spread over them, since one partition key takes at most
# 1,000 writes/s and a rising ``created_at`` always writes at its tail.
PENDING_SHARDS = 4


class TaskRef(TypedDict):
    """The Globus Compute task a request runs as (``note_task``)."""

    endpoint: str
    id: str


class RequestRecord(TypedDict, total=False):
    """A request's item as the store hands it out (numbers as plain ints and floats).

    ``function`` is the HPC function it runs (a key of an endpoint's ``functions``:
    ``chat_completions``, ``embeddings``, a job's function); ``slot`` the Globus Compute endpoint
    it runs on now, ``endpoint`` the one that finished it (the poller's outcome fields).
    """

    request_id: Required[str]
    status: Required[str]
    owner: str
    model: str
    function: str
    # The API route it came by when that is not ``function`` (``responses``, ``messages``: they
    # run as ``chat_completions``); usage records count it under this name.
    route: str
    # A streamed request's connection and dialect (``StreamTarget.to_item``), else ``reply_to``:
    # the queue of the API instance that waits for it.
    stream: dict[str, Any]
    reply_to: str
    # The rate-limit counters admission took (``LimitStore``), given back when it finishes.
    limits: dict[str, Any]
    # The engine body inline, or in S3 (``BlobStore.fields``); the result likewise.
    payload: str
    payload_key: str
    payload_bytes: int
    result: str
    result_key: str
    result_bytes: int
    attempt: int
    pending_shard: str
    created_at: float
    dispatched_at: float
    finished_at: float
    expires_at: int
    slot: str
    task: TaskRef
    task_at: float
    job_owner: str
    # The outcome (``chalicelib.poller.planning``).
    endpoint: str
    usage: dict[str, Any]
    engine_time_ms: float
    stream_stats: dict[str, Any]
    error: dict[str, Any]
    status_code: int


def _record(item: dict[str, Any]) -> RequestRecord:
    """A wire item, read back: the table's items are written only as ``RequestRecord``."""
    return cast(RequestRecord, from_wire(item))


class RequestConflictError(StoreError):
    """A conditional write lost: the request is not in the state the caller expected."""

    def __init__(self, message: str, current: RequestRecord | None) -> None:
        super().__init__(message)
        self.current = current


class RequestStore:
    """On the low-level DynamoDB client: this table is on every request's path twice (API and
    poller), and the resource layer costs several times the CPU per call."""

    def __init__(
        self, client: DynamoDBClient, table_name: str, *, ttl_s: int = 7 * 24 * 3600
    ) -> None:
        self._ddb = client
        self.table_name = table_name
        self._ttl_s = ttl_s

    def new(self, item: dict[str, Any]) -> RequestRecord:
        """The queued record of a new request (``item`` plus status, shard, times, TTL)."""
        now = time.time()
        # ``item``: the gateway's request_id, owner, model, function, payload, …
        return cast(
            RequestRecord,
            {
                **item,
                "status": "queued",
                "attempt": 0,
                "pending_shard": str(random.randrange(PENDING_SHARDS)),
                "created_at": round(now, 3),
                "expires_at": int(now) + self._ttl_s,
            },
        )

    def create(self, item: dict[str, Any]) -> None:
        self._ddb.put_item(
            TableName=self.table_name,
            Item=to_wire(self.new(item)),
            ConditionExpression="attribute_not_exists(request_id)",
        )

    def put_new(self, record: RequestRecord) -> RequestRecord | None:
        """Write ``record`` (from ``new``) unless the request has one already; that one, or None
        when this call wrote it. One call either way: it doubles as a read-back."""
        try:
            self._ddb.put_item(
                TableName=self.table_name,
                Item=to_wire(record),
                ConditionExpression="attribute_not_exists(request_id)",
                ReturnValuesOnConditionCheckFailure="ALL_OLD",
            )
        except ClientError as exc:
            if not condition_failed(exc):
                raise
            return _record(old_item(exc))
        return None

    def get(self, request_id: str) -> RequestRecord | None:
        out = self._ddb.get_item(
            TableName=self.table_name, Key=_key(request_id), ConsistentRead=True
        )
        item = _record(out["Item"]) if out.get("Item") else None
        if item is None or int(item.get("expires_at", 0)) < time.time():
            # AWS deletes expired TTL items late (moto never does): treat them as gone.
            return None
        return item

    def status(self, request_id: str) -> str | None:
        """The request's status alone, or None when it is missing or expired: the stream
        relay's check, so an eventually consistent read (half the cost; a status turns terminal
        there within a second)."""
        out = self._ddb.get_item(
            TableName=self.table_name,
            Key=_key(request_id),
            ProjectionExpression="#s, expires_at",
            ExpressionAttributeNames={"#s": "status"},
        )
        item = from_wire(out["Item"]) if out.get("Item") else None
        if item is None or int(item.get("expires_at", 0)) < time.time():
            return None
        return str(item["status"])

    def get_owned(self, request_id: str, owner: str) -> RequestRecord | None:
        """The record if ``owner`` owns it, else None, and the same work either way.

        A ``Query`` with a filter on the owner: DynamoDB reads the item and drops it
        server-side, so a foreign id returns the same empty page as a missing one, and the
        time to answer cannot tell them apart (a ``GetItem`` returns the foreign item whole).
        """
        out = self._ddb.query(
            TableName=self.table_name,
            KeyConditionExpression="request_id = :id",
            FilterExpression="#o = :owner AND expires_at >= :now",
            ExpressionAttributeNames={"#o": "owner"},
            ExpressionAttributeValues=to_wire(
                {":id": request_id, ":owner": owner, ":now": int(time.time())}
            ),
            ConsistentRead=True,
        )
        items = out.get("Items") or []
        return _record(items[0]) if items else None

    def mark_job(self, request_id: str, owner: str) -> None:
        """Make the request one of ``owner``'s jobs (``GET /v1/jobs`` lists it); whatever its
        status: the poller may have claimed, even finished, it already."""
        self._update(
            request_id,
            "SET job_owner = :owner",
            "attribute_exists(#s)",
            {":owner": owner},
            returns="NONE",
        )

    def list_jobs(
        self, owner: str, *, limit: int, after: RequestRecord | None = None
    ) -> tuple[list[RequestRecord], bool]:
        """Up to ``limit`` of ``owner``'s jobs, newest first, after the record ``after``; and
        whether more exist (the index holds only what a listing shows: no payload, no result)."""
        kwargs: dict[str, Any] = {
            "TableName": self.table_name,
            "IndexName": JOBS_INDEX,
            "KeyConditionExpression": "job_owner = :owner",
            "FilterExpression": "expires_at >= :now",
            "ExpressionAttributeValues": to_wire({":owner": owner, ":now": int(time.time())}),
            "ScanIndexForward": False,
        }
        if after is not None:
            kwargs["ExclusiveStartKey"] = to_wire(
                {
                    "request_id": after["request_id"],
                    "job_owner": owner,
                    "created_at": after["created_at"],
                }
            )
        items: list[RequestRecord] = []
        while True:
            out = self._ddb.query(**kwargs, Limit=limit + 1 - len(items))
            items += [_record(i) for i in out.get("Items") or []]
            if len(items) > limit or "LastEvaluatedKey" not in out:
                return items[:limit], len(items) > limit
            kwargs["ExclusiveStartKey"] = out["LastEvaluatedKey"]

    def oldest_pending(self) -> tuple[str, float] | None:
        """The unfinished request created first (id, ``created_at``), or None: one Query of one
        item per shard of the ``pending`` index (eventually consistent, as GSIs are)."""
        oldest: tuple[str, float] | None = None
        for shard in range(PENDING_SHARDS):
            out = self._ddb.query(
                TableName=self.table_name,
                IndexName=PENDING_INDEX,
                KeyConditionExpression="pending_shard = :shard",
                ExpressionAttributeValues={":shard": {"S": str(shard)}},
                ScanIndexForward=True,
                Limit=1,
            )
            for item in out.get("Items") or []:
                record = from_wire(item)
                created_at = float(record["created_at"])
                if oldest is None or created_at < oldest[1]:
                    oldest = (str(record["request_id"]), created_at)
        return oldest

    def claim(
        self,
        request_id: str,
        *,
        slot: str | None = None,
        record: RequestRecord | None = None,
    ) -> RequestRecord:
        """queued|dispatched → dispatched, attempt + 1; returns the whole record (one call).

        ``slot``: the endpoint the claimer will run it on, noted in the same write unless the
        record names one already (``slot`` in the record returned): a predecessor that died
        left its task running there, and the request goes back to it.

        ``record``: the queued record the message carried (``new``). While the request has no
        record (the API wrote none: the first delivery), the claim writes it, claimed, with one
        conditional put; a record that is there is claimed by update (a second call). A record
        older than the API's first read-back (``API_WRITES_AFTER_S``) is likely there: the
        update goes first then, and the put only if there is none.
        """
        if record is None:
            return self._claim_update(request_id, slot)
        age_s = time.time() - float(record.get("created_at", 0))
        if age_s >= API_WRITES_AFTER_S - 0.5:
            try:
                return self._claim_update(request_id, slot)
            except RequestConflictError as exc:
                if exc.current is not None:
                    raise
        claimed = cast(
            RequestRecord,
            {
                **record,
                "request_id": request_id,
                "status": "dispatched",
                "dispatched_at": round(time.time(), 3),
                "attempt": int(record.get("attempt", 0)) + 1,
                **({"slot": slot} if slot is not None else {}),
            },
        )
        if self.put_new(claimed) is None:
            return claimed
        return self._claim_update(request_id, slot)

    def _claim_update(self, request_id: str, slot: str | None) -> RequestRecord:
        update = "SET #s = :dispatched, dispatched_at = :now"
        values: dict[str, Any] = {":dispatched": "dispatched", ":queued": "queued", ":one": 1}
        if slot is not None:
            update += ", slot = if_not_exists(slot, :slot)"
            values[":slot"] = slot
        return cast(
            RequestRecord,
            self._update(
                request_id,
                update + " ADD attempt :one",
                "#s IN (:queued, :dispatched)",
                values,
                returns="ALL_NEW",
            ),
        )

    def complete(self, request_id: str, fields: dict[str, Any], *, slot: str | None = None) -> None:
        self._finish(request_id, "completed", fields, slot)

    def fail(self, request_id: str, fields: dict[str, Any], *, slot: str | None = None) -> None:
        self._finish(request_id, "failed", fields, slot)

    def cancel(self, request_id: str, fields: dict[str, Any], *, slot: str | None = None) -> None:
        self._finish(request_id, "cancelled", fields, slot)

    def _finish(
        self, request_id: str, status: str, fields: dict[str, Any], slot: str | None
    ) -> None:
        """Make the request terminal; with ``slot``, only while the record names that endpoint
        (the write of the poller that ran it there), and the slot leaves the record."""
        # Nothing returned: the caller has the fields, and echoing the result back costs bytes.
        names = {f"#f{i}": k for i, k in enumerate(fields)}
        values = {f":f{i}": v for i, v in enumerate(fields.values())}
        sets = ", ".join(f"#f{i} = :f{i}" for i in range(len(fields)))
        update = f"SET #s = :status, finished_at = :now{', ' + sets if sets else ''}"
        update += " REMOVE pending_shard"
        condition = "#s IN (:queued, :dispatched)"
        values = {":status": status, ":queued": "queued", ":dispatched": "dispatched", **values}
        if slot is not None:
            update += ", slot"
            condition += " AND slot = :slot"
            values[":slot"] = slot
        self._update(request_id, update, condition, values, names, returns="NONE")

    def move_slot(self, request_id: str, old: str | None, new: str) -> None:
        """The request leaves endpoint ``old`` unfinished (failover, or its predecessor's
        endpoint cannot take it) for ``new``: noted before it is submitted there."""
        condition = "#s = :dispatched AND " + (
            "slot = :old" if old else "attribute_not_exists(slot)"
        )
        values = {":slot": new, ":dispatched": "dispatched", **({":old": old} if old else {})}
        self._update(request_id, "SET slot = :slot", condition, values, returns="NONE")

    def note_task(self, request_id: str, endpoint: str, task_id: str) -> None:
        """Keep the endpoint's task id on the record (``task``, submitted at ``task_at``) while the
        request runs there: a poller that re-claims it attaches to that task, not a new one."""
        self._update(
            request_id,
            "SET #t = :task, task_at = :now",
            "#s = :dispatched AND slot = :slot",
            {
                ":task": {"endpoint": endpoint, "id": task_id},
                ":dispatched": "dispatched",
                ":slot": endpoint,
            },
            {"#t": "task"},  # a DynamoDB reserved word
            returns="NONE",
        )

    def _update(
        self,
        request_id: str,
        update: str,
        condition: str,
        values: dict[str, Any],
        names: dict[str, str] | None = None,
        *,
        returns: Literal["ALL_NEW", "NONE"],
    ) -> dict[str, Any]:
        try:
            out = self._ddb.update_item(
                TableName=self.table_name,
                Key=_key(request_id),
                UpdateExpression=update,
                ConditionExpression=f"attribute_exists(request_id) AND {condition}",
                ExpressionAttributeNames={"#s": "status", **(names or {})},
                ExpressionAttributeValues=to_wire(
                    {**values, ":now": round(time.time(), 3)} if ":now" in update else values
                ),
                ReturnValues=returns,
                ReturnValuesOnConditionCheckFailure="ALL_OLD",
            )
        except ClientError as exc:
            if not condition_failed(exc):
                raise
            old = old_item(exc)
            current = _record(old) if old else None
            state = current["status"] if current else "missing"
            raise RequestConflictError(f"request {request_id} is {state}", current) from exc
        return from_wire(out.get("Attributes", {}))


def _key(request_id: str) -> dict[str, Any]:
    return {"request_id": {"S": request_id}}
