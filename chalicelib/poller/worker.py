"""The poller loop: a long-running process; several replicas may share one queue.

For each message: claim the request (conditional write, attempt + 1), route it, submit it to the
endpoint's executor, keep the message invisible while the task runs (the visibility timeout is the
lease, extended by one heartbeat for all held messages: ``leases``), store the result, then notify
the waiting API process, delete the message. The record is written before the notice goes out, so
a client that has its answer reads the request completed. A failure before the result is stored
(an endpoint that cannot be reached, a task lost with its worker) leaves the message for
redelivery after a backoff; on its last delivery the request is marked failed and the message
goes on to the DLQ. Only the function's own exception fails a request at once.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from aws_lambda_powertools import Logger

from chalicelib import limits, router
from chalicelib.compute.executors import ExecutorPool, RemoteTaskError
from chalicelib.poller import planning
from chalicelib.poller.leases import Leases
from chalicelib.registry import Registry
from chalicelib.settings import Settings
from chalicelib.stores.blobs import BlobStore, dumps
from chalicelib.stores.deleter import BatchDeleter
from chalicelib.stores.limits import LimitStore
from chalicelib.stores.queue import RequestQueue
from chalicelib.stores.replies import ReplySender
from chalicelib.stores.requests import RequestConflictError, RequestStore
from chalicelib.streaming.notifier import StreamNotifier

# Waits before re-claiming a request whose record is not there yet.
CLAIM_RETRY_S = (0.01, 0.05, 0.25)


class PollerStopped(Exception):
    """Raised by the signal handler to cut an idle long-poll short (see ``main``)."""


class Poller:
    def __init__(
        self,
        *,
        settings: Settings,
        registry: Registry,
        queue: RequestQueue,
        requests: RequestStore,
        blobs: BlobStore,
        replies: ReplySender,
        executors: ExecutorPool,
        logger: Logger,
        limits: LimitStore | None = None,
        streams: StreamNotifier | None = None,
    ) -> None:
        self._s = settings
        self._registry = registry
        self._queue = queue
        self._requests = requests
        self._blobs = blobs
        self._replies = replies
        self._executors = executors
        self._log = logger
        self._limits = limits
        # Streaming requests: the capability for the task, the final frame (chalicelib/streaming).
        self._streams = streams
        self._inflight: dict[str, int] = {}
        self._active = 0
        self._workers = ThreadPoolExecutor(settings.poller_max_inflight, "poller")
        self._lock = threading.Lock()
        self.stopping = threading.Event()
        self.receiving = False
        # Failures that were handled (retried, logged): what an operator counts.
        self.counts: Counter[str] = Counter()
        # Done messages are deleted in batches, off the request's critical path.
        self._deleter = BatchDeleter(queue.client, queue.url, max_delay_s=1.0)
        self._leases = Leases(queue, settings.poller_visibility_timeout_s, logger)

    def run(self) -> None:
        self._log.info("poller started", extra={"queue": self._queue.url})
        while not self.stopping.is_set():
            free = self._free_slots()
            if free == 0:
                time.sleep(0.005)
                continue
            try:
                self.receiving = True
                messages = self._queue.receive(
                    free, self._s.poller_wait_time_s, self._s.poller_visibility_timeout_s
                )
            except PollerStopped:
                break  # interrupted mid long-poll: nothing was received
            except Exception:  # noqa: BLE001 - AWS hiccup: log, back off, keep polling
                self.counts["receive_errors"] += 1
                self._log.exception("receive failed")
                self.stopping.wait(1.0)
                continue
            finally:
                self.receiving = False
            for message in messages:
                with self._lock:
                    self._active += 1
                self._leases.hold(message["ReceiptHandle"])
                self._workers.submit(self._handle_guarded, message)
        self._workers.shutdown(wait=True)
        self._leases.close()
        self._deleter.close()
        self._executors.shutdown()

    def _free_slots(self) -> int:
        with self._lock:
            return max(0, self._s.poller_max_inflight - self._active)

    def _handle_guarded(self, message: dict[str, Any]) -> None:
        try:
            self.handle(message)
        except Exception:  # noqa: BLE001 - one bad message must not stop the poller
            self.counts["unexpected_errors"] += 1
            self._log.exception("unexpected poller error")
        finally:
            self._leases.release(message["ReceiptHandle"])
            with self._lock:
                self._active -= 1

    def handle(self, message: dict[str, Any]) -> None:
        receipt = message["ReceiptHandle"]
        final = planning.is_final_attempt(message, self._s.max_receive_count)
        try:
            request_id = planning.request_id_of(message)
        except planning.PoisonMessageError as exc:
            self.counts["poison_messages"] += 1
            self._log.error("poison message", extra={"reason": str(exc)})
            self._retry_later(message)
            return  # left undeleted: it reaches the DLQ after max_receive_count deliveries
        log = {"request_id": request_id, "receive_count": planning.receive_count(message)}
        try:
            t0 = time.perf_counter()
            record = self._claim(request_id)
        except RequestConflictError as exc:
            if exc.current is not None:
                # Already completed or failed: a duplicate delivery. Drop it.
                self._deleter.add(receipt)
                self._log.info(
                    "duplicate delivery dropped", extra={**log, "status": exc.current["status"]}
                )
            else:
                self.counts["unknown_requests"] += 1
                self._log.error("message for unknown request", extra=log)
                self._retry_later(message)
            return
        t1 = time.perf_counter()
        log.update(
            model=record.get("model"),
            owner=record.get("owner"),
            attempt=record["attempt"],
            # Where a request's time goes, without any text of it.
            queued_ms=round((time.time() - float(record["created_at"])) * 1000, 1),
            claim_ms=round((t1 - t0) * 1000, 1),
        )
        try:
            status, fields, response = self._run(request_id, record)
        except Exception as exc:  # noqa: BLE001 - any failure here is retried, then DLQ'd
            self.counts["run_errors"] += 1
            self._log.exception("request could not be run", extra=log)
            if final:
                detail = (
                    f"{type(exc).__name__} (gave up after {planning.receive_count(message)} tries)"
                )
                self._finish(
                    request_id,
                    record,
                    "failed",
                    planning.engine_failure(request_id, detail),
                    None,
                    log,
                )
            else:
                self._retry_later(message)
            return  # not deleted: redelivered, or on to the DLQ after the final try
        log["run_ms"] = round((time.perf_counter() - t1) * 1000, 1)
        self._finish(request_id, record, status, fields, response, log)
        self._deleter.add(receipt)

    def _retry_later(self, message: dict[str, Any]) -> None:
        """Let the message reappear after a backoff instead of a whole lease."""
        receipt = message["ReceiptHandle"]
        self._leases.release(receipt)
        try:
            self._queue.extend(receipt, planning.retry_delay_s(message))
        except Exception:  # noqa: BLE001 - it reappears when the lease ends anyway
            self.counts["backoff_errors"] += 1
            self._log.exception("could not set the retry backoff")

    def _claim(self, request_id: str) -> dict[str, Any]:
        """Claim; a missing record is re-read briefly (the API writes it as it enqueues)."""
        for delay in CLAIM_RETRY_S:
            try:
                return self._requests.claim(request_id)
            except RequestConflictError as exc:
                if exc.current is not None:
                    raise
            time.sleep(delay)
        return self._requests.claim(request_id)

    def _run(self, request_id: str, record: dict[str, Any]) -> tuple[str, dict[str, Any], Any]:
        function = record["function"]
        endpoint, deployment = router.choose(
            self._registry.candidates(record["model"], function), dict(self._inflight)
        )
        body = self._blobs.load(record, "payload")
        task: dict[str, Any] = {
            "request_id": request_id,
            "engine": deployment.engine,
            "body": body,
        }
        if record.get("stream"):
            if self._streams is not None:
                task["stream"] = self._streams.task_fields(request_id, record["stream"])
            else:
                self.counts["streams_unconfigured"] += 1
                self._log.warning(
                    "streaming not configured: runs unstreamed", extra={"request_id": request_id}
                )
        function_id = endpoint.functions[function]
        with self._lock:
            self._inflight[endpoint.name] = self._inflight.get(endpoint.name, 0) + 1
        try:
            future = self._executors.get(endpoint).submit_to_registered_function(
                function_id, args=(task,)
            )
            try:
                # The heartbeat keeps the message invisible however long this takes.
                result = future.result()
            except RemoteTaskError as exc:
                # The function itself raised on the node: a definite failure, not retried.
                failure = planning.engine_failure(request_id, str(exc))
                return "failed", {**failure, "endpoint": endpoint.name}, None
        finally:
            with self._lock:
                self._inflight[endpoint.name] -= 1
        return planning.outcome_of(request_id, result, endpoint=endpoint.name)

    def _finish(
        self,
        request_id: str,
        record: dict[str, Any],
        status: str,
        fields: dict[str, Any],
        response: Any,
        log: dict[str, Any],
    ) -> None:
        result_text = None
        if status == "completed":
            # Serialised once: the same text goes into the record (or S3) and the notice.
            result_text = dumps(response)
            key = f"requests/{request_id}/result.json"
            limit = self._s.inline_limit_bytes
            fields = {**fields, **self._blobs.fields("result", result_text, key, limit)}
        started = time.perf_counter()
        # The record first, then the notice: a client that has its answer must read the request
        # completed. Should the write fail, the message stays, and its redelivery re-collects
        # the same task result (tasks are keyed by request id) and writes it.
        try:
            if status == "completed":
                self._requests.complete(request_id, fields)
            else:
                self._requests.fail(request_id, fields)
        except RequestConflictError as exc:
            current = exc.current["status"] if exc.current else None
            self._log.info("already finished by another poller", extra={**log, "status": current})
            return
        if record.get("reply_to"):
            notice = planning.notice_for(
                request_id, status, fields, result_text, self._s.inline_limit_bytes
            )
            if not self._replies.send(record["reply_to"], notice):
                self.counts["notices_undelivered"] += 1
        if record.get("stream") and self._streams is not None:
            # After the record: a client that has its done frame reads the request completed.
            self._streams.finished(request_id, record["stream"], status, fields)
        usage = fields.get("usage") or {}
        if record.get("limits") and self._limits is not None:
            # Only the write that made the request terminal gets here: released exactly once.
            try:
                self._limits.release(record["limits"], limits.used_tokens(usage))
            except Exception:  # noqa: BLE001 - the answer is out; a lost release expires
                self.counts["limit_release_errors"] += 1
                self._log.exception("rate-limit release failed", extra=log)
        self._log.info(
            "request finished",
            extra={
                **log,
                "status": status,
                "endpoint": fields.get("endpoint"),
                "engine_time_ms": fields.get("engine_time_ms"),
                "prompt_tokens": usage.get("prompt_tokens"),
                "completion_tokens": usage.get("completion_tokens"),
                "status_code": fields.get("status_code"),
                "store_ms": round((time.perf_counter() - started) * 1000, 1),
            },
        )
