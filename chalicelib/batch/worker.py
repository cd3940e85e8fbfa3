"""The batch worker: consumes the batch queue and drives each batch to a final status.

A message is ``{"owner", "batch_id"}`` (the API created the batch) or an S3 event notification
(the drop folder; ``s3:TestEvent`` is dropped). The worker holds the message while the batch
runs (a heartbeat extends its visibility), and deletes it once the batch is final. If the worker
dies, the message reappears and a worker resumes the batch from its record:

1. ``validating``: the input is read line by line (never whole), checked (``LineChecker``) and
   written to S3 as shards of ``batch_shard_lines`` lines as it goes; any problem → ``failed``
   with ``errors.data`` naming lines. Otherwise → ``in_progress`` with the total and shard count.
2. ``in_progress``: every shard not yet in ``done_shards`` becomes one HPC task
   (``hpc_functions.batch.run_shard``) with presigned URLs for its input and outputs; at most
   ``batch_max_inflight_shards`` at once over all batches (batch's share of the endpoints). A
   shard's task id is stable (``<batch>-shard-<n>-try-<k>``): a restarted worker re-attaches to
   a task still running rather than running its lines again. A failing shard is tried
   ``batch_shard_attempts`` times, then its lines go to the error file. Each finished shard is
   counted once (``BatchStore.record_shard``); its answer says whether a cancel arrived.
3. ``finalizing``: shard outputs are concatenated in shard order (= input order) through a
   temporary file into the output and error files → ``completed`` (or ``cancelled`` after a
   cancel, ``expired`` past the 24 h window, both keeping the finished lines).

A drop-folder object becomes a batch only for an owner the gateway knows: a user with an active
API key, whose groups and domain the batch then carries (anyone else's fails at once,
``unknown_owner``, and runs nothing). The newest version of ``inbox/<owner>/NAME.jsonl`` owns
``outbox/<owner>/NAME.*`` (``BatchStore.claim_drop_name``): a newer version cancels the batch of
the older one (``superseded_by``), an older one arriving late is cancelled at once, and a batch
writes to the outbox only while it holds the name, under the name's publish lease. Its input is
read by the ETag its event named, so a rewrite between the event and the read fails the batch
(``input_file_changed``, nothing published) instead of running the new bytes twice.
"""

from __future__ import annotations

import contextlib
import functools
import json
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, NamedTuple

from aws_lambda_powertools import Logger

from chalicelib import placement, router
from chalicelib.access import may_use
from chalicelib.auth import Principal
from chalicelib.auth.apikeys import user_principal
from chalicelib.batch.accounting import BatchAccounting
from chalicelib.batch.drop import DropObject, drop_objects, sequence_key
from chalicelib.batch.records import dumps_line
from chalicelib.ceilings import check_max_tokens
from chalicelib.compute.executors import ExecutorPool
from chalicelib.consumer.loop import Consumer
from chalicelib.protocol.batches import (
    COMPLETION_WINDOW_S,
    DIALECTS,
    ROUTES,
    LineChecker,
    batch_object,
    render_output_line,
)
from chalicelib.protocol.common import GatewayRequest
from chalicelib.registry import Registry
from chalicelib.settings import Settings
from chalicelib.stores.batches import TERMINAL, BatchConflictError, BatchExistsError, BatchStore
from chalicelib.stores.endpoints import EndpointStore
from chalicelib.stores.files import FileIdTakenError, FileStore, sortable_id
from chalicelib.stores.keys import KeyStore
from chalicelib.stores.objects import ObjectChangedError, ObjectNotFoundError, ObjectStore
from chalicelib.stores.queue import RequestQueue

SHARD_FUNCTION = "batch_shard"
# Batches one worker drives at once (their shards share ``batch_max_inflight_shards``).
MAX_BATCHES = 4
# A drop name's publish lease: longer than any one outbox write (an output file of a 200 MB
# input, at S3's slowest), so only a worker that died mid-write holds it until it runs out.
PUBLISH_LEASE_S = 600.0
# How long a progress update waits for another writer's lease before it is skipped (the next
# update carries newer counts); a final one waits out the lease.
PROGRESS_WAIT_S = 10.0


class ShardRun(NamedTuple):
    """A shard's line counts, and where it ran with what result (None: its lines failed)."""

    completed: int
    failed: int
    endpoint: str | None = None
    result: dict[str, Any] | None = None


class Interrupted(Exception):
    """The worker is stopping mid-batch: the message stays, a worker resumes the batch."""


def shard_key(batch_id: str, kind: str, n: int) -> str:
    return f"batches/{batch_id}/{kind}/{n:06d}.jsonl"


class BatchWorker:
    def __init__(
        self,
        *,
        settings: Settings,
        registry: Registry,
        queue: RequestQueue,
        batches: BatchStore,
        files: FileStore,
        data: ObjectStore,
        drop: ObjectStore,
        keys: KeyStore,
        executors: ExecutorPool,
        logger: Logger,
        endpoints: EndpointStore | None = None,
        policy: router.CircuitPolicy | None = None,
        accounting: BatchAccounting | None = None,
        progress_wait_s: float = PROGRESS_WAIT_S,
    ) -> None:
        self._s = settings
        self._registry = registry
        self._queue = queue
        self._batches = batches
        self._files = files
        self._data = data
        self._drop = drop
        self._keys = keys
        self._progress_wait_s = progress_wait_s
        self._executors = executors
        self._log = logger
        # Shared endpoint status (``None``: every candidate is taken as usable, e.g. in tests).
        self._endpoints = endpoints
        self._policy = policy or router.CircuitPolicy()
        self._statuses: dict[str, router.EndpointStatus] = {}
        self._shards = ThreadPoolExecutor(max(1, settings.batch_max_inflight_shards), "shard")
        self._inflight: dict[str, int] = {}
        self._lock = threading.Lock()
        # Failures that were handled (retried, logged): what an operator counts.
        self.counts: Counter[str] = Counter()
        self.consumer = Consumer(
            queue,
            self._handle_message,
            logger=logger,
            counts=self.counts,
            max_inflight=MAX_BATCHES,
            wait_time_s=settings.poller_wait_time_s,
            lease_s=settings.batch_visibility_timeout_s,
            full_wait_s=0.05,
            error_kind="batch_errors",
            thread_name="batch",
        )
        self.stopping = self.consumer.stopping
        # Metrics and usage records of counted shards (main.py starts and closes it).
        self.accounting = accounting

    # ----- the loop ------------------------------------------------------------------------

    def run(self) -> None:
        self._log.info("batch worker started", extra={"queue": self._queue.url})
        self.consumer.run()
        self._shards.shutdown(wait=True)
        self._executors.shutdown()

    def _handle_message(self, message: dict[str, Any]) -> None:
        """Delete the message once its batch is final; an exception leaves it for redelivery
        (the batch resumes from its record)."""
        try:
            self.handle(message)
        except Interrupted as exc:
            self._log.info(
                "stopping mid-batch; it resumes on redelivery", extra={"batch": str(exc)}
            )
            return
        self._queue.client.delete_message(
            QueueUrl=self._queue.url, ReceiptHandle=message["ReceiptHandle"]
        )

    def handle(self, message: dict[str, Any]) -> None:
        body = json.loads(message["Body"])
        if not isinstance(body, dict) or body.get("Event") == "s3:TestEvent":
            return
        if "Records" in body:
            for obj in drop_objects(body):
                self.process(*self._start_drop(obj))
            return
        self.process(str(body["owner"]), str(body["batch_id"]))

    def _start_drop(self, obj: DropObject) -> tuple[str, str]:
        """The batch this inbox object version starts: made once, however often it is seen."""
        batch_id, new = self._batches.claim_source(obj.source, sortable_id("batch_"))
        if not new:
            self.counts["drop_duplicates"] += 1
            self._log.info("drop object seen before", extra={"key": obj.key, "batch": batch_id})
        now = int(time.time())
        item: dict[str, Any] = {
            "owner": obj.owner,
            "batch_id": batch_id,
            "endpoint": "",
            "input_file_id": f"s3://{obj.bucket}/{obj.key}",
            "input_bucket": obj.bucket,
            "input_key": obj.key,
            "input_version": obj.version_id,
            "input_etag": obj.etag,
            "sequencer": obj.sequencer,
            "drop_name": obj.name,
            "completion_window": "24h",
            "created_at": now,
            "expires_at": now + COMPLETION_WINDOW_S,
        }
        principal = user_principal(obj.owner, self._keys.user_keys(obj.owner))
        if principal is None:
            self.counts["drop_unknown_owners"] += 1
            self._log.warning(
                "drop folder owner is not a user with an active key",
                extra={"key": obj.key, "batch": batch_id},
            )
            item.update(
                status="failed",
                failed_at=now,
                principal=Principal(id=obj.owner, username=obj.owner).to_item(),
                errors=[
                    {
                        "code": "unknown_owner",
                        "line": None,
                        "message": f"{obj.owner!r} is not a user of this gateway with an active "
                        "API key: the drop folder runs batches only for such users.",
                        "param": None,
                    }
                ],
            )
        else:
            item["principal"] = principal.to_item()
        created: dict[str, Any] | None = None
        # Made already on an earlier delivery: resume it.
        with contextlib.suppress(BatchExistsError):
            created = self._batches.create(item)
        if not obj.sequencer:
            self.counts["drop_unsequenced"] += 1
            self._log.warning("drop event without a sequencer", extra={"key": obj.key})
        claim = self._batches.claim_drop_name(
            obj.owner, obj.name, sequence_key(obj.sequencer), batch_id
        )
        if not claim.won:
            # An older version than the one whose batch holds the name: it never runs.
            self._supersede(obj.owner, batch_id, claim.holder)
        elif claim.previous:
            self._supersede(obj.owner, claim.previous, batch_id)
        if created is not None:
            # The owner sees the batch from the start (validating), not only once it runs.
            self._publish(created)
        return obj.owner, batch_id

    def _supersede(self, owner: str, batch_id: str, by: str) -> None:
        """A newer version of its drop object holds the name: cancel ``batch_id`` if it is
        still validating or running (once finalizing or done, it only stops publishing)."""
        self.counts["drop_superseded"] += 1
        self._log.info("drop batch superseded", extra={"batch": batch_id, "by": by})
        # Past cancelling already, or not made yet: it publishes nothing either way.
        with contextlib.suppress(BatchConflictError):
            self._batches.transition(
                owner, batch_id, "cancelling", ("validating", "in_progress"), {"superseded_by": by}
            )

    # ----- one batch -----------------------------------------------------------------------

    def process(self, owner: str, batch_id: str) -> None:
        record = self._batches.get(owner, batch_id)
        if record is None:
            self.counts["unknown_batches"] += 1
            self._log.error("message for unknown batch", extra={"batch": batch_id})
            return
        log = {"batch": batch_id, "owner": owner}
        if record["status"] in TERMINAL:
            return
        if record["status"] == "validating":
            record = self._validate(record)
        if record["status"] == "in_progress":
            record = self._run_shards(record)
        if record["status"] in ("in_progress", "cancelling", "finalizing"):
            record = self._finalize(record)
        self._log.info(
            "batch finished",
            extra={**log, "status": record["status"], "total": record.get("total")},
        )
        if self.accounting is not None:
            self.accounting.batch_finished(record["status"])

    def _may_use(self, principal: Principal, route: str, model: str) -> bool:
        function = ROUTES[route][0]
        served = [
            c
            for c in self._registry.candidates(model, function)
            if c[0].functions.get(SHARD_FUNCTION)
        ]
        return bool(served) and may_use(principal, self._registry.access(model))

    def _ceiling(self, req: GatewayRequest) -> None:
        check_max_tokens(self._registry.model(req.model), req)

    def _validate(self, record: dict[str, Any]) -> dict[str, Any]:
        batch_id, owner = record["batch_id"], record["owner"]
        principal = Principal.from_item(record["principal"])
        checker: LineChecker = LineChecker(
            route=record.get("endpoint") or "",
            may_use=lambda model: self._may_use(principal, checker.route, model),
            ceiling=self._ceiling,
            max_requests=self._s.batch_max_requests,
        )
        changed = False
        try:
            shards = self._write_shards(record, checker)
            errors = checker.finish()
        except ObjectChangedError:
            # Written again (no versions) after its event: the new bytes have an event and a
            # batch of their own; running them here would run them twice.
            self.counts["input_changed"] += 1
            self._log.warning(
                "batch input was written again before it was read",
                extra={"batch": batch_id, "key": record["input_key"]},
            )
            changed, shards = True, 0
            errors = [
                {
                    "code": "input_file_changed",
                    "line": None,
                    "message": f"{record['input_file_id']} was written again before this "
                    "batch read it; the new content runs as a batch of its own.",
                    "param": "input_file_id",
                }
            ]
        except ObjectNotFoundError:
            # Deleted (or its version removed) after the batch was made: retrying cannot help,
            # so the batch fails now instead of its message going round to the dead-letter queue.
            self.counts["input_missing"] += 1
            self._log.warning(
                "batch input is gone", extra={"batch": batch_id, "key": record["input_key"]}
            )
            message = f"The input file {record['input_file_id']} no longer exists."
            shards = 0
            errors = [
                {
                    "code": "input_file_not_found",
                    "line": None,
                    "message": message,
                    "param": "input_file_id",
                }
            ]
        try:
            if errors:
                record = self._batches.transition(
                    owner, batch_id, "failed", ("validating",), {"errors": errors}
                )
            else:
                record = self._batches.transition(
                    owner,
                    batch_id,
                    "in_progress",
                    ("validating",),
                    {
                        "total": checker.requests,
                        "shard_count": shards,
                        "model": checker.model,
                        "endpoint": checker.route,
                        "shard_endpoints": {},
                    },
                )
        except BatchConflictError as exc:
            if exc.current is None:
                raise
            record = exc.current  # cancelled while validating: finalize with nothing done
            if record["status"] == "cancelling" and not errors:
                record = self._batches.set_fields(
                    owner,
                    batch_id,
                    {"total": checker.requests, "shard_count": 0, "endpoint": checker.route},
                    status="cancelling",
                )
        if not changed:
            self._publish(record)
        return record

    def _write_shards(self, record: dict[str, Any], checker: LineChecker) -> int:
        """Check the input line by line, writing valid lines as shards; the shards written
        (their count is final only when ``checker`` found no error)."""
        batch_id = record["batch_id"]
        source = self._data.in_bucket(record["input_bucket"])
        size = 0
        shard: list[bytes] = []
        shards = 0
        lines = source.lines(
            record["input_key"], record.get("input_version"), record.get("input_etag")
        )
        for raw in lines:
            size += len(raw) + 1
            if size > self._s.batch_max_file_bytes:
                checker.file_too_large(self._s.batch_max_file_bytes)
                break
            line = checker.check(raw)
            if line is None or checker.errors:
                continue
            shard.append(dumps_line(line))
            if len(shard) == self._s.batch_shard_lines:
                self._data.put_bytes(shard_key(batch_id, "in", shards), b"".join(shard))
                shards, shard = shards + 1, []
        if not checker.errors and shard:
            self._data.put_bytes(shard_key(batch_id, "in", shards), b"".join(shard))
            shards += 1
        return shards

    def _run_shards(self, record: dict[str, Any]) -> dict[str, Any]:
        done = set(record.get("done_shards") or [])
        pending = [n for n in range(int(record["shard_count"])) if n not in done]
        stop = threading.Event()
        futures = [self._shards.submit(self._shard, record, n, stop) for n in pending]
        for future in futures:
            future.result()
        if self.stopping.is_set():
            raise Interrupted(record["batch_id"])
        latest = self._batches.get(record["owner"], record["batch_id"])
        assert latest is not None
        return latest

    def _shard(self, record: dict[str, Any], n: int, stop: threading.Event) -> None:
        batch_id, owner = record["batch_id"], record["owner"]
        if stop.is_set() or self.stopping.is_set():
            return
        if time.time() > float(record["expires_at"]):
            stop.set()
            return
        run = self._run_task(record, n)
        item = self._batches.record_shard(owner, batch_id, n, run.completed, run.failed)
        if item is None:
            self.counts["shards_counted_before"] += 1
            return
        if self.accounting is not None:
            self.accounting.shard(record, n, run.completed, run.failed, run.endpoint, run.result)
        if item["status"] != "in_progress":
            stop.set()  # cancelling: no new shards
        self._publish(item)

    @property
    def shards_running(self) -> int:
        with self._lock:
            return sum(self._inflight.values())

    @property
    def batches_running(self) -> int:
        return self.consumer.active

    def _run_task(self, record: dict[str, Any], n: int) -> ShardRun:
        """Run shard ``n`` (bounded tries): its (completed, failed) line counts."""
        batch_id = record["batch_id"]
        ttl = self._s.presigned_url_ttl_s
        function = ROUTES[record["endpoint"]][0]
        candidates = [
            c
            for c in self._registry.candidates(record["model"], function)
            if c[0].functions.get(SHARD_FUNCTION)
        ]
        # Where this shard's latest try went: a restarted worker resumes from that try, on that
        # endpoint, so it attaches to the task still running there instead of running it again.
        placed = (record.get("shard_endpoints") or {}).get(str(n))
        placed_on, first = (str(placed[0]), int(placed[1])) if placed else (None, 1)
        last: Exception | None = None
        for attempt in range(first, self._s.batch_shard_attempts + 1):
            prefer = placed_on if attempt == first else None
            step = self._plan(record, candidates, prefer)
            if isinstance(step, placement.Fail):
                return ShardRun(0, self._fail_shard(batch_id, n, "no endpoint was usable in time"))
            # The router's order (offline endpoints and open circuits skipped), then the
            # endpoint with the most spare batch capacity (this worker's own count) first.
            endpoint, deployment = min(
                step.candidates,
                key=lambda c: (
                    c[0].name != prefer,
                    self._inflight.get(c[0].name, 0) / max(1, c[0].max_inflight),
                ),
            )
            if (endpoint.name, attempt) != (placed_on, first):
                self._batches.place_shard(record["owner"], batch_id, n, endpoint.name, attempt)
            task = {
                "request_id": f"{batch_id}-shard-{n}-try-{attempt}",
                "engine": deployment.engine,
                "function": function,
                "batch_id": batch_id,
                "shard": n,
                "input_url": self._data.presign_get(shard_key(batch_id, "in", n), ttl),
                "output_url": self._data.presign_put(shard_key(batch_id, "out", n), ttl),
                "error_url": self._data.presign_put(shard_key(batch_id, "err", n), ttl),
                "max_rows": self._s.batch_rows_per_pass,
            }
            with self._lock:
                self._inflight[endpoint.name] = self._inflight.get(endpoint.name, 0) + 1
            try:
                executor = self._executors.get(endpoint)
                future = executor.submit_to_registered_function(
                    endpoint.functions[SHARD_FUNCTION], args=(task,)
                )
                result = future.result()
                completed, failed = int(result["completed"]), int(result["failed"])
                return ShardRun(completed, failed, endpoint.name, result)
            except Exception as exc:  # noqa: BLE001 - retried, then the lines fail
                last = exc
                self.counts["shard_errors"] += 1
                self._log.exception(
                    "shard failed", extra={"batch": batch_id, "shard": n, "attempt": attempt}
                )
            finally:
                with self._lock:
                    self._inflight[endpoint.name] -= 1
        return ShardRun(0, self._fail_shard(batch_id, n, f"{type(last).__name__}: {last}"))

    def _plan(
        self, record: dict[str, Any], candidates: list[router.Candidate], prefer: str | None
    ) -> placement.Try | placement.Fail:
        """Where a shard's try may go (``placement.plan``): while every endpoint is offline or
        its circuit open, wait, spending no try, until the batch's window ends."""
        while True:
            step = placement.plan(
                self._usable(candidates),
                model=record["model"],
                failed_on={},  # a shard's next try may go back to the endpoint that failed it
                held=prefer,
                now_s=time.time(),
                online_wait_until_s=float(record["expires_at"]),
            )
            if not isinstance(step, placement.Wait):
                return step
            if self.stopping.wait(self._policy.cooldown_s / 3):
                raise Interrupted(record["batch_id"])

    def _usable(self, candidates: list[router.Candidate]) -> list[router.Candidate]:
        """The candidates the router would use now, best first (shared status, one Scan)."""
        if self._endpoints is None:
            return candidates
        try:
            self._statuses = self._endpoints.statuses()
        except Exception:  # noqa: BLE001 - route on the last known statuses
            self.counts["status_errors"] += 1
            self._log.exception("endpoint statuses could not be read")
        return router.rank(candidates, self._statuses, time.time(), self._policy)

    def _fail_shard(self, batch_id: str, n: int, detail: str) -> int:
        """Every line of a shard that could not be run goes to the error file."""
        lines = []
        for raw in self._data.lines(shard_key(batch_id, "in", n)):
            line = json.loads(raw)
            lines.append(
                dumps_line(
                    {
                        "id": f"batch_req_{sortable_id('')}",
                        "custom_id": line["custom_id"],
                        "response": None,
                        "error": {
                            "code": "shard_failed",
                            "message": f"The request could not be run: {detail}"[:1000],
                        },
                    }
                )
            )
        self._data.put_bytes(shard_key(batch_id, "out", n), b"")
        self._data.put_bytes(shard_key(batch_id, "err", n), b"".join(lines))
        return len(lines)

    def _finalize(self, record: dict[str, Any]) -> dict[str, Any]:
        batch_id, _owner = record["batch_id"], record["owner"]
        status = record["status"]
        if status == "in_progress":
            expired = time.time() > float(record["expires_at"])
            final = "expired" if expired else "completed"
            if not expired:
                record = self._transition(record, "finalizing", ("in_progress",))
                if record["status"] != "finalizing":
                    return self._finalize(record) if record["status"] not in TERMINAL else record
        elif status == "cancelling":
            final = "cancelled"
        else:
            final = "completed"
        done = sorted(int(n) for n in record.get("done_shards") or [])
        fields: dict[str, Any] = {}
        for kind, suffix, field in (
            ("out", "output", "output_file_id"),
            ("err", "errors", "error_file_id"),
        ):
            with tempfile.NamedTemporaryFile(prefix=f"{batch_id}-{kind}-") as tmp:
                size = sum(self._shard_output(record, kind, n, tmp) for n in done)
                tmp.flush()
                if record.get("drop_name"):
                    outbox = self._outbox(record, f"{suffix}.jsonl")
                    upload = functools.partial(self._drop.upload_file, Path(tmp.name), outbox)
                    self._drop_write(record, upload, True)
                if size:
                    fields[field] = self._output_file(record, suffix, Path(tmp.name), size)
        record = self._transition(record, final, (record["status"],), fields)
        self._publish(record)
        return record

    def _shard_output(self, record: dict[str, Any], kind: str, n: int, out: Any) -> int:
        """Shard ``n``'s ``kind`` lines appended to ``out``; their size. A dialect's output
        lines (``/v1/responses``, ``/v1/messages``) are rendered back from chat in it, with what
        its input lines kept for that (one shard in memory at a time)."""
        batch_id = record["batch_id"]
        dialect = DIALECTS.get(record.get("endpoint") or "")
        if dialect is None or kind != "out":
            return self._data.download_to(shard_key(batch_id, kind, n), out)
        kept: dict[str, dict[str, Any]] = {}
        for raw in self._data.lines(shard_key(batch_id, "in", n)):
            line = json.loads(raw)
            kept[line["custom_id"]] = line.get("render") or {}
        size = 0
        for raw in self._data.get_bytes(shard_key(batch_id, kind, n)).splitlines():
            if not raw.strip():
                continue
            line = json.loads(raw)
            render_output_line(dialect, line, kept.get(line.get("custom_id"), {}))
            data = dumps_line(line)
            out.write(data)
            size += len(data)
        return size

    def _output_file(self, record: dict[str, Any], suffix: str, path: Path, size: int) -> str:
        batch_id = record["batch_id"]
        # Deterministic: a finalize run twice (a worker died in it) makes one file, not two.
        file_id = f"file-{batch_id.removeprefix('batch_')}-{suffix}"
        key = f"batches/{batch_id}/{suffix}.jsonl"
        self._data.upload_file(path, key)
        with contextlib.suppress(FileIdTakenError):
            self._files.create(
                {
                    "owner": record["owner"],
                    "file_id": file_id,
                    "filename": f"{batch_id}_{suffix}.jsonl",
                    "purpose": "batch_output",
                    "bytes": size,
                    "status": "processed",
                    "key": key,
                }
            )
        return file_id

    def _transition(
        self,
        record: dict[str, Any],
        to: str,
        allowed_from: tuple[str, ...],
        fields: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        try:
            return self._batches.transition(
                record["owner"], record["batch_id"], to, allowed_from, fields
            )
        except BatchConflictError as exc:
            if exc.current is None:
                raise
            return exc.current  # a cancel (or a peer) got there first: go on from there

    def _outbox(self, record: dict[str, Any], suffix: str) -> str:
        return f"outbox/{record['owner']}/{record['drop_name']}.{suffix}"

    def _publish(self, record: dict[str, Any]) -> None:
        """A drop-folder batch's object as ``outbox/<owner>/NAME.status.json``."""
        if not record.get("drop_name"):
            return
        body = json.dumps(batch_object(record), indent=1).encode()
        key = self._outbox(record, "status.json")
        self._drop_write(
            record,
            lambda: self._drop.put_bytes(key, body, "application/json"),
            record["status"] in TERMINAL,
        )

    def _drop_write(self, record: dict[str, Any], write: Callable[[], None], final: bool) -> bool:
        """Run ``write`` (to the outbox) if the batch holds its drop name, under the name's
        publish lease; whether it ran. A progress update (not ``final``) that finds another
        write under way for longer than ``progress_wait_s`` is skipped: the next one is newer."""
        owner, name, batch_id = record["owner"], record["drop_name"], record["batch_id"]
        deadline = time.monotonic() + (PUBLISH_LEASE_S if final else self._progress_wait_s)
        while True:
            gate, token = self._batches.begin_publish(owner, name, batch_id, PUBLISH_LEASE_S)
            if gate == "unclaimed":
                # Made before names were claimed: claim it now, in its own sequencer's order.
                sequence = sequence_key(str(record.get("sequencer") or ""))
                self._batches.claim_drop_name(owner, name, sequence, batch_id)
                continue
            if gate == "superseded":
                self.counts["drop_writes_superseded"] += 1
                return False
            if gate == "open":
                break
            if time.monotonic() > deadline:
                self.counts["drop_writes_skipped"] += 1
                self._log.warning("outbox busy; update skipped", extra={"batch": batch_id})
                return False
            if self.stopping.wait(0.1):
                raise Interrupted(batch_id)
        try:
            write()
        finally:
            self._batches.end_publish(owner, name, token)
        return True
