"""The poller loop: a long-running process; several replicas may share one queue.

For each message: claim the request (conditional write, attempt + 1), route it, submit it to the
endpoint's executor, keep the message invisible while the task runs (the visibility timeout is the
lease), store the result, notify the waiting API process, delete the message. A failure before the
result is stored leaves the message for redelivery; on its last delivery the request is marked
failed and the message goes on to the DLQ.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeoutError
from typing import Any

from aws_lambda_powertools import Logger

from chalicelib import limits, router
from chalicelib.compute.executors import ExecutorPool, RemoteTaskError
from chalicelib.gateway import load_field, payload_fields
from chalicelib.poller import planning
from chalicelib.registry import Registry
from chalicelib.settings import Settings
from chalicelib.stores.blobs import BlobStore
from chalicelib.stores.deleter import BatchDeleter
from chalicelib.stores.limits import LimitStore
from chalicelib.stores.queue import RequestQueue
from chalicelib.stores.replies import ReplySender
from chalicelib.stores.requests import RequestConflictError, RequestStore

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
        self._inflight: dict[str, int] = {}
        self._active = 0
        self._workers = ThreadPoolExecutor(settings.poller_max_inflight, "poller")
        self._lock = threading.Lock()
        self.stopping = threading.Event()
        self.receiving = False
        # Done messages are deleted in batches, off the request's critical path.
        self._deleter = BatchDeleter(queue.client, queue.url, max_delay_s=1.0)

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
                self._log.exception("receive failed")
                self.stopping.wait(1.0)
                continue
            finally:
                self.receiving = False
            for message in messages:
                with self._lock:
                    self._active += 1
                self._workers.submit(self._handle_guarded, message)
        self._workers.shutdown(wait=True)
        self._deleter.close()
        self._executors.shutdown()

    def _free_slots(self) -> int:
        with self._lock:
            return max(0, self._s.poller_max_inflight - self._active)

    def _handle_guarded(self, message: dict[str, Any]) -> None:
        try:
            self.handle(message)
        except Exception:  # noqa: BLE001 - one bad message must not stop the poller
            self._log.exception("unexpected poller error")
        finally:
            with self._lock:
                self._active -= 1

    def handle(self, message: dict[str, Any]) -> None:
        receipt = message["ReceiptHandle"]
        final = planning.is_final_attempt(message, self._s.max_receive_count)
        try:
            request_id = planning.request_id_of(message)
        except planning.PoisonMessageError as exc:
            self._log.error("poison message", extra={"reason": str(exc)})
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
                self._log.error("message for unknown request", extra=log)
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
            status, fields, response = self._run(request_id, record, receipt)
        except Exception as exc:  # noqa: BLE001 - any failure here is retried, then DLQ'd
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
                self._queue.extend(receipt, planning.retry_delay_s(message))
            return  # not deleted: redelivered, or on to the DLQ after the final try
        log["run_ms"] = round((time.perf_counter() - t1) * 1000, 1)
        self._finish(request_id, record, status, fields, response, log)
        self._deleter.add(receipt)

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

    def _run(
        self, request_id: str, record: dict[str, Any], receipt: str
    ) -> tuple[str, dict[str, Any], Any]:
        function = record["function"]
        endpoint, deployment = router.choose(
            self._registry.candidates(record["model"], function), dict(self._inflight)
        )
        body = load_field(self._blobs, record, "payload")
        task = {"request_id": request_id, "engine": deployment.engine, "body": body}
        function_id = endpoint.functions[function]
        with self._lock:
            self._inflight[endpoint.name] = self._inflight.get(endpoint.name, 0) + 1
        try:
            future = self._executors.get(endpoint).submit_to_registered_function(  # type: ignore[attr-defined]
                function_id, args=(task,)
            )
            try:
                result = self._await(future, receipt)
            except RemoteTaskError as exc:
                # The function itself raised on the node: a definite failure, not retried.
                failure = planning.engine_failure(request_id, str(exc))
                return "failed", {**failure, "endpoint": endpoint.name}, None
        finally:
            with self._lock:
                self._inflight[endpoint.name] -= 1
        return planning.outcome_of(request_id, result, endpoint=endpoint.name)

    def _await(self, future: Future[Any], receipt: str) -> Any:
        """Wait for the task, extending the message's visibility (our lease) as it runs."""
        lease = self._s.poller_visibility_timeout_s
        while True:
            try:
                return future.result(timeout=max(1.0, lease / 3))
            except FutureTimeoutError:
                self._queue.extend(receipt, lease)

    def _finish(
        self,
        request_id: str,
        record: dict[str, Any],
        status: str,
        fields: dict[str, Any],
        response: Any,
        log: dict[str, Any],
    ) -> None:
        if status == "completed":
            fields = {
                **fields,
                **payload_fields(
                    self._blobs,
                    f"requests/{request_id}/result.json",
                    "result",
                    response,
                    self._s.inline_limit_bytes,
                ),
            }
        # The notice goes out before the record write: the waiting client needs only the notice,
        # and an AWS endpoint that serves calls one at a time (moto) would otherwise make it
        # wait for the write too. Should the write then fail, the message stays, and its
        # redelivery re-collects the same task result (tasks are keyed by request id) and
        # writes it; a GET in between briefly sees the request still dispatched.
        started = time.perf_counter()
        if record.get("reply_to"):
            notice = planning.notice_for(
                request_id, status, fields, response, self._s.inline_limit_bytes
            )
            self._replies.send(record["reply_to"], notice)
        try:
            if status == "completed":
                self._requests.complete(request_id, fields)
            else:
                self._requests.fail(request_id, fields)
        except RequestConflictError as exc:
            current = exc.current["status"] if exc.current else None
            self._log.info("already finished by another poller", extra={**log, "status": current})
            return
        usage = fields.get("usage") or {}
        if record.get("limits") and self._limits is not None:
            # Only the write that made the request terminal gets here: released exactly once.
            try:
                self._limits.release(record["limits"], limits.used_tokens(usage))
            except Exception:  # noqa: BLE001 - the answer is out; a lost release expires
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
