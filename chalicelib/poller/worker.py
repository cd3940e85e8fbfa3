"""The poller loop: a long-running process; several replicas may share one queue.

For each message: claim the request (conditional write, attempt + 1), route it, submit it to the
endpoint's executor, keep the message invisible while the task runs (the visibility timeout is the
lease, extended by one heartbeat for all held messages: ``leases``), store the result, then notify
the waiting API process, delete the message. The record is written before the notice goes out, so
a client that has its answer reads the request completed. A failure before the result is stored
(an endpoint that cannot be reached, a task lost with its worker) leaves the message for
redelivery after a backoff; on its last delivery the request is marked failed and the message
goes on to the DLQ. Only the function's own exception fails a request at once (and a task over
the service's size limits, which would fail anywhere).

Large bodies and results travel by S3, not inside the task (``compute_offload``): the task
carries a presigned GET of a body over ``compute_offload_over_bytes`` and a presigned PUT for a
result over it (``planning.body_source``, ``result_to``); the HPC function answers a stored
result with a pointer, read back here. A small request costs no S3 call for it.
"""

from __future__ import annotations

import json
import os
import socket
import time
import uuid
from collections import Counter
from collections.abc import Mapping
from concurrent.futures import TimeoutError as FutureTimeoutError
from dataclasses import dataclass, field
from typing import Any

from aws_lambda_powertools import Logger

from chalicelib import limits, placement, router
from chalicelib.compute.errors import (
    ComputeError,
    ResultTooLargeError,
    TaskTimeoutError,
    TaskTooLargeError,
)
from chalicelib.compute.executors import Attachable, ExecutorPool
from chalicelib.consumer.accounting import Accounting
from chalicelib.consumer.loop import Consumer
from chalicelib.poller import planning
from chalicelib.poller.affinity import Homes
from chalicelib.poller.board import StatusBoard
from chalicelib.poller.capacity import Capacity
from chalicelib.poller.fairness import FairGate
from chalicelib.poller.warming import Warmer
from chalicelib.registry import Endpoint, ModelDeployment, Registry
from chalicelib.router import COLD, AffinityPolicy, CircuitPolicy, EndpointStatus
from chalicelib.settings import Settings
from chalicelib.stores.blobs import BlobStore, dumps
from chalicelib.stores.deleter import BatchDeleter
from chalicelib.stores.endpoints import EndpointStore
from chalicelib.stores.limits import LimitStore
from chalicelib.stores.queue import RequestQueue
from chalicelib.stores.replies import ReplySender
from chalicelib.stores.requests import TERMINAL, RequestConflictError, RequestRecord, RequestStore
from chalicelib.streaming.notifier import StreamNotifier

# Waits before re-claiming a request whose record is not there yet.
CLAIM_RETRY_S = (0.01, 0.05, 0.25)


def holder_id() -> str:
    """This poller's name on the leases it holds: host, process, and a nonce per start."""
    host = "".join(c if c.isalnum() else "-" for c in socket.gethostname())[:32]
    return f"{host}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


class NoEndpointError(Exception):
    """No endpoint could take the request now; it is retried after a backoff."""


@dataclass
class _Run:
    """What ``Poller._run`` has learnt of one request so far (the loop's state)."""

    request_id: str
    # The queued record the message carries (the API wrote none): the claim writes it.
    carried: RequestRecord | None
    # The record once claimed, and the task's fields that carry its body (inline, or a
    # presigned GET), made once claimed.
    record: RequestRecord | None = None
    body: dict[str, Any] | None = None
    # Where the request goes back to (a dead predecessor's task is there, keyed by request id),
    # and the endpoint its record names; the predecessor's task id (Globus Compute) to attach.
    held: str | None = None
    recorded: str | None = None
    attach: str | None = None
    # The endpoints that failed it (name → error type): not tried again.
    failed_on: dict[str, str] = field(default_factory=dict)


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
        endpoints: EndpointStore,
        board: StatusBoard,
        limits: LimitStore | None = None,
        streams: StreamNotifier | None = None,
        policy: CircuitPolicy | None = None,
        accounting: Accounting | None = None,
    ) -> None:
        self._s = settings
        self._registry = registry
        self._queue = queue
        self._requests = requests
        self._blobs = blobs
        # Presigned URLs for what travels by S3 to and from the HPC node.
        self._objects = blobs.objects()
        self._replies = replies
        self._executors = executors
        self._log = logger
        self._limits = limits
        # Shared endpoint status (capacity, circuits, heartbeats) and the routing policy.
        self._endpoints = endpoints
        self._board = board
        self._policy = policy or CircuitPolicy()
        # Who gets the next free slot among the requests this poller holds.
        self._gate = FairGate()
        # Streaming requests: the capability for the task, the final frame (chalicelib/streaming).
        self._streams = streams
        # Metrics and usage records of finished requests (main.py starts and closes it).
        self.accounting = accounting
        # Failures that were handled (retried, logged): what an operator counts.
        self.counts: Counter[str] = Counter()
        self.consumer = Consumer(
            queue,
            self.handle,
            logger=logger,
            counts=self.counts,
            max_inflight=settings.poller_max_inflight,
            wait_time_s=settings.poller_wait_time_s,
            lease_s=settings.poller_visibility_timeout_s,
            full_wait_s=0.005,
            error_kind="unexpected_errors",
            thread_name="poller",
            before_receive=self._gather,
        )
        self.stopping = self.consumer.stopping
        self._leases = self.consumer.leases
        # Conversations' homes (chalicelib/router.py ``prefer_home``): read with the statuses.
        self._homes = Homes(
            endpoints,
            logger,
            self.counts,
            policy=AffinityPolicy(
                bound=settings.affinity_load_bound, ttl_s=settings.affinity_ttl_s
            ),
            circuit_policy=self._policy,
            recorder=accounting.metrics if accounting is not None else None,
        )
        # Done messages are deleted in batches, off the request's critical path.
        self._deleter = BatchDeleter(queue.client, queue.url, max_delay_s=1.0)
        # Warm-ups: asked for by the API, or for a cold deployment a request is routed to.
        self.warmer = Warmer(executors, endpoints, logger)
        # Endpoint slots this poller leases from the shared capacity (``capacity``).
        self._capacity = Capacity(
            endpoints,
            holder_id(),
            logger,
            lease_s=settings.poller_slot_lease_s,
            linger_s=settings.poller_slot_linger_s,
            statuses=board.statuses,
        )

    def run(self) -> None:
        self._log.info("poller started", extra={"queue": self._queue.url})
        self._board.start()
        self._capacity.start()
        self.consumer.run()
        self._capacity.close()
        self._board.close()
        self._deleter.close()
        self._executors.shutdown()

    def _gather(self) -> None:
        if self._gate.waiting():
            # Requests already wait for endpoint slots: new ones could not start sooner, so
            # let several gather and receive them in one call.
            self.stopping.wait(self._s.poller_share_wait_s)

    @property
    def inflight(self) -> int:
        """Requests this poller holds (running, or waiting for a slot)."""
        return self.consumer.active

    @property
    def waiting_for_slots(self) -> int:
        """Requests this poller holds that wait in its fair line for an endpoint slot."""
        return self._gate.waiting()

    def handle(self, message: dict[str, Any]) -> None:
        receipt = message["ReceiptHandle"]
        final = planning.is_final_attempt(message, self._s.max_receive_count)
        try:
            warm = planning.warm_of(message)
            if warm is not None:
                self._warm(*warm)
                self._deleter.add(receipt)
                return
            request_id = planning.request_id_of(message)
        except planning.PoisonMessageError as exc:
            self.counts["poison_messages"] += 1
            self._log.error("poison message", extra={"reason": str(exc)})
            self._retry_later(message)
            return  # left undeleted: it reaches the DLQ after max_receive_count deliveries
        log = {"request_id": request_id, "receive_count": planning.receive_count(message)}
        # The record once claimed (what a failure is reported with).
        claimed: dict[str, Any] = {}
        # The queued record the message carries (the API wrote none): the claim writes it.
        carried = planning.record_of(message)
        try:
            hints = planning.hints_from(carried) if carried else self._hints(request_id)
            status, fields, response, record, slot = self._run(
                request_id, hints, carried, log, claimed
            )
        except RequestConflictError as exc:
            if exc.current is not None:
                # Already completed or failed: a duplicate delivery. Drop it.
                self.counts["duplicates_dropped"] += 1
                self._deleter.add(receipt)
                self._log.info(
                    "duplicate delivery dropped", extra={**log, "status": exc.current["status"]}
                )
                self._final_frame_again(request_id, exc.current)
            else:
                self.counts["unknown_requests"] += 1
                self._log.error("message for unknown request", extra=log)
                self._retry_later(message)
            return
        except Exception as exc:  # noqa: BLE001 - any failure here is retried, then DLQ'd
            self.counts["run_errors"] += 1
            self._log.exception("request could not be run", extra=log)
            if final:
                # Only our own words reach the client: no endpoint URL, no remote traceback.
                ours = isinstance(exc, NoEndpointError | router.NoDeploymentError)
                reason = str(exc) if ours else type(exc).__name__
                detail = f"{reason} (gave up after {planning.receive_count(message)} tries)"
                if not claimed and carried:
                    self._requests.put_new(carried)  # never claimed: only the message held it
                self._finish(
                    request_id,
                    claimed
                    or carried
                    or self._requests.get(request_id)
                    or {"request_id": request_id},
                    "failed",
                    planning.engine_failure(request_id, detail),
                    None,
                    log,
                )
            else:
                self._retry_later(message)
            return  # not deleted: redelivered, or on to the DLQ after the final try
        self._finish(request_id, record, status, fields, response, log, slot)
        self._deleter.add(receipt)

    def _hints(self, request_id: str) -> planning.Hints:
        """A message without routing hints (a streamed request's): they come from the record,
        re-read briefly if it is not there yet; a finished one is a duplicate delivery."""
        for delay in (*CLAIM_RETRY_S, None):
            record = self._requests.get(request_id)
            if record is not None:
                if record["status"] in TERMINAL:
                    raise RequestConflictError(f"request {request_id} is finished", record)
                return planning.hints_from(record)
            if delay is not None:
                time.sleep(delay)
        raise RequestConflictError(f"request {request_id} is missing", None)

    def _final_frame_again(self, request_id: str, current: RequestRecord) -> None:
        """A finished streamed request delivered again: the poller that finished it may have
        died between storing the result and posting ``done`` (or ``error``). Post it again; a
        client that already has it ignores a second final frame for a finished id."""
        if not current.get("stream") or self._streams is None:
            return
        if current["status"] not in TERMINAL:
            return
        self.counts["final_frames_resent"] += 1
        # Only a dialect's closing events need the result (chat's come from the done frame).
        needs = (
            current["stream"].get("dialect") not in (None, "chat") and current["status"] != "failed"
        )
        result = self._blobs.load(current, "result") if needs else None
        self._streams.finished(request_id, current["stream"], current["status"], current, result)

    def _warm(self, model: str, name: str) -> None:
        """The API's warm-up of ``model`` on endpoint ``name`` (a stale one is dropped)."""
        found = [(e, m) for e in self._registry.endpoints for m in e.models]
        match = [(e, m) for e, m in found if e.name == name and m.model == model]
        if not match:
            self.counts["unknown_warms"] += 1
            self._log.error("warm-up for no deployment", extra={"endpoint": name, "model": model})
            return
        self.warmer.start(*match[0])

    def _retry_later(self, message: dict[str, Any]) -> None:
        """Let the message reappear after a backoff instead of a whole lease."""
        receipt = message["ReceiptHandle"]
        self._leases.release(receipt)
        try:
            self._queue.extend(receipt, planning.retry_delay_s(message))
        except Exception:  # noqa: BLE001 - it reappears when the lease ends anyway
            self.counts["backoff_errors"] += 1
            self._log.exception("could not set the retry backoff")

    def _claim(self, request_id: str, slot: str, carried: RequestRecord | None) -> RequestRecord:
        """Claim, writing the record the message carries if there is none yet; a message that
        names a record not there yet (the API writes it as it enqueues) retries briefly."""
        for delay in CLAIM_RETRY_S:
            try:
                return self._requests.claim(request_id, slot=slot, record=carried)
            except RequestConflictError as exc:
                if exc.current is not None:
                    raise
            time.sleep(delay)
        return self._requests.claim(request_id, slot=slot, record=carried)

    def _run(
        self,
        request_id: str,
        hints: planning.Hints,
        carried: RequestRecord | None,
        log: dict[str, Any],
        claimed: dict[str, Any],
    ) -> tuple[str, dict[str, Any], Any, RequestRecord, str]:
        """Run the request on the best endpoint that has room; fail over on infrastructure
        failures. Returns the outcome, the claimed record and the endpoint it ran on.

        Requests wait for slots in a fair line (``fairness``): the next free slot goes to the
        owner with the fewest requests running here, so one user's flood cannot hold another
        user's request behind it. The request is claimed once it has a slot, with the endpoint
        noted in the same write (``slot``); its slot goes back as soon as its task is done.

        Each round the router ranks the endpoints, ``placement.plan`` decides (try these for a
        slot / wait for one to come online / fail), and this loop acts on the decision.
        """
        candidates = self._registry.candidates(hints.model, hints.function)
        run = _Run(request_id, carried)
        deadline = time.monotonic() + self._s.poller_slot_wait_s
        online_wait_until = time.monotonic() + self._s.poller_offline_wait_s
        waited_offline = False
        with self._gate.line(hints.owner) as place:
            while True:
                if not place.wait_turn(1.0):
                    self._check(deadline)
                    continue
                statuses = self._capacity.view(self._board.statuses())
                # The router's ranking of where the request may run, best first.
                ranked = list(router.rank(candidates, statuses, time.time(), self._policy))
                # A conversation's home first, unless it is down, open or over its load bound.
                ranked, homing = self._homes.order(hints.affinity, candidates, ranked, statuses)
                step = placement.plan(
                    ranked,
                    model=hints.model,
                    failed_on=run.failed_on,
                    held=run.held,
                    now_s=time.monotonic(),
                    online_wait_until_s=online_wait_until,
                )
                if isinstance(step, placement.Fail):
                    raise NoEndpointError(step.reason)
                if isinstance(step, placement.Wait):
                    # Nothing serving the model is online: wait a little for one, aside so
                    # other models' requests go.
                    if not waited_offline:
                        self.counts["offline_waits"] += 1  # requests, not wait rounds
                        waited_offline = True
                    place.step_aside()
                    self._board.wait_for_change(0.5)
                    place.back_in_line()
                    continue
                chosen = self._take_slot(step.candidates, statuses, run.held)
                if chosen is None:
                    # Every usable endpoint is at capacity: wait for a slot here, first in
                    # line, the message kept invisible by the heartbeat.
                    self._check(deadline)
                    self._capacity.wait(0.25)
                    continue
                endpoint, deployment = chosen
                claim = self._claim_on(endpoint.name, run, log, claimed)
                if claim is None:
                    continue  # held elsewhere: planned again, that endpoint first
                record, body = claim
                place.start()
                known = statuses.get(endpoint.name)
                now = time.time()
                if known and router.reported(known, deployment.model, now, self._policy) == COLD:
                    # The request waits for the load either way; the warm-up makes every
                    # worker load it and shows the deployment starting to everyone.
                    self.warmer.start(endpoint, deployment)
                task_id, run.attach = run.attach, None
                try:
                    status, fields, response = self._run_on(
                        request_id, record, endpoint, deployment, body, task_id
                    )
                except Exception as exc:  # noqa: BLE001 - the endpoint's failure: fail over
                    self._capacity.give(endpoint.name)
                    run.held = None
                    self._endpoint_failed(endpoint.name, request_id, exc)
                    run.failed_on[endpoint.name] = type(exc).__name__
                    place.back_in_line()
                    continue
                self._capacity.give(endpoint.name)
                self._endpoint_ok(endpoint.name)
                self._homes.ran(homing, endpoint.name, statuses)
                return status, fields, response, record, endpoint.name

    def _take_slot(
        self,
        candidates: tuple[router.Candidate, ...],
        statuses: dict[str, EndpointStatus],
        held: str | None,
    ) -> router.Candidate | None:
        """A slot on the first of ``candidates`` that has one: that candidate, else None."""
        for candidate in candidates:
            if self._enter(candidate[0], statuses.get(candidate[0].name), held):
                return candidate
        return None

    def _claim_on(
        self, name: str, run: _Run, log: dict[str, Any], claimed: dict[str, Any]
    ) -> tuple[RequestRecord, dict[str, Any]] | None:
        """With a slot on endpoint ``name``: claim the request there (the first time) or move
        its slot there, and make its task's body fields; the record and the body. None when
        the claim finds the request held on another endpoint (re-claimed from a poller that
        died: it goes back to where its task still is, and attaches): the slot is given back
        and ``run.held`` names that endpoint."""
        try:
            if run.record is None:
                started = time.perf_counter()
                record = self._claim(run.request_id, name, run.carried)
                run.record = record
                claimed.update(record)
                log.update(
                    model=record.get("model"),
                    owner=record.get("owner"),
                    attempt=record["attempt"],
                    # Where a request's time goes, without any text of it.
                    queued_ms=round((time.time() - float(record["created_at"])) * 1000, 1),
                    claim_ms=round((time.perf_counter() - started) * 1000, 1),
                )
                run.recorded = record.get("slot")
                task: Mapping[str, Any] = record.get("task") or {}
                run.attach = str(task["id"]) if task.get("endpoint") == run.recorded else None
                if run.recorded != name:
                    run.held = run.recorded
                    self._capacity.give(name)
                    return None
            elif run.recorded != name:
                self._requests.move_slot(run.request_id, run.recorded, name)
                run.recorded, run.attach = name, None
            if run.body is None:
                run.body = self._task_body(run.request_id, run.record)
        except BaseException:
            self._capacity.give(name)
            raise
        run.held = name
        return run.record, run.body

    @staticmethod
    def _check(deadline: float) -> None:
        step = placement.slot_wait(now_s=time.monotonic(), deadline_s=deadline)
        if isinstance(step, placement.Fail):
            raise NoEndpointError(step.reason)

    def _enter(self, endpoint: Endpoint, status: EndpointStatus | None, held: str | None) -> bool:
        """A slot on ``endpoint`` for the request (where its task already runs: whether the
        endpoint has room or not)."""
        if held == endpoint.name:
            return self._capacity.take(endpoint, status, force=True)
        half_open = (
            status is not None
            and router.circuit(status, time.time(), self._policy) == router.HALF_OPEN
        )
        # One probe per cooldown: whoever wins the conditional write sends it.
        if half_open and status is not None:
            open_until = status.opened_at + self._policy.cooldown_s
            if not self._endpoints.take_probe(endpoint.name, open_until):
                return False
        return self._capacity.take(endpoint, status, wanted=max(1, self._gate.waiting()))

    def _endpoint_failed(self, name: str, request_id: str, exc: Exception) -> None:
        self.counts["endpoint_failures"] += 1
        self._log.warning(
            "endpoint failed; failing over",
            extra={
                "endpoint": name,
                "request_id": request_id,
                "error": type(exc).__name__,
                "detail": str(exc)[:500],
            },
        )
        try:
            self._endpoints.record_failure(name, self._policy.failures_to_open)
        except Exception:  # noqa: BLE001 - the circuit learns on the next failure
            self.counts["circuit_write_errors"] += 1
            self._log.exception("circuit not updated", extra={"endpoint": name})
        # This poller acts on what it just learnt at once; peers within a refresh (1 s).
        self._board.refresh()

    def _endpoint_ok(self, name: str) -> None:
        status = self._board.statuses().get(name)
        if status is None or status.failures == 0:
            return
        try:
            self._endpoints.record_success(name)
        except Exception:  # noqa: BLE001 - it closes on the next success
            self.counts["circuit_write_errors"] += 1
            self._log.exception("circuit not closed", extra={"endpoint": name})
        self._board.refresh()

    def _task_body(self, request_id: str, record: RequestRecord) -> dict[str, Any]:
        """The task's fields that carry the body: ``{"body"}``, or ``{"body_from"}`` naming a
        presigned GET (``planning.body_source``)."""
        s = self._s
        over = s.compute_offload_over_bytes if s.compute_offload else None
        source = planning.body_source(record, over)
        text = None
        if source == planning.MEASURE:
            # Its size not on the record: read it (a missing object raises here, as before).
            text = self._blobs.load_text(record, "payload") or "null"
            source = planning.body_source({**record, "payload_bytes": len(text.encode())}, over)
        if source == planning.INLINE:
            if text is not None:
                return {"body": json.loads(text)}
            return {"body": self._blobs.load(record, "payload")}
        if source == planning.UPLOAD:
            key = f"requests/{request_id}/payload.json"
            size: int | None = self._blobs.put_text(key, record["payload"])
        else:
            key, size = record["payload_key"], record.get("payload_bytes")
        self.counts["bodies_by_url"] += 1
        url = self._objects.presign_get(key, s.presigned_url_ttl_s)
        return {"body_from": planning.body_from(url, None if size is None else int(size))}

    def _result_to(self, request_id: str) -> dict[str, Any]:
        """Where the task stores a result over the threshold: a presigned PUT (made here, no
        AWS call), used only when the result is that large."""
        key = planning.result_key(request_id, uuid.uuid4().hex[:12])
        url = self._objects.presign_put(key, self._s.presigned_url_ttl_s)
        return planning.result_to(url, key, self._s.compute_offload_over_bytes)

    def _run_on(
        self,
        request_id: str,
        record: RequestRecord,
        endpoint: Endpoint,
        deployment: ModelDeployment,
        body: dict[str, Any],
        task_id: str | None = None,
    ) -> tuple[str, dict[str, Any], Any]:
        task: dict[str, Any] = {"request_id": request_id, "engine": deployment.engine, **body}
        if self._s.compute_offload:
            task["result_to"] = self._result_to(request_id)
        if record.get("stream"):
            if self._streams is not None:
                task["stream"] = self._streams.task_fields(request_id, record["stream"])
            else:
                self.counts["streams_unconfigured"] += 1
                self._log.warning(
                    "streaming not configured: runs unstreamed", extra={"request_id": request_id}
                )
        function_id = endpoint.functions[record["function"]]
        executor = self._executors.get(endpoint)
        submitted_at = time.time()
        try:
            if isinstance(executor, Attachable):
                if task_id is not None:
                    # Re-claimed from a poller that died: collect its task, do not run it again.
                    self.counts["tasks_reattached"] += 1
                    future = executor.attach(task_id)
                    submitted_at = float(record.get("task_at") or submitted_at)
                else:
                    task_id, future = executor.submit_task(function_id, args=(task,))
                    self._requests.note_task(request_id, endpoint.name, task_id)
            else:
                # The local endpoint keys tasks by request id: a resubmission attaches by itself.
                future = executor.submit_to_registered_function(function_id, args=(task,))
        except ComputeError as exc:
            # Over the service's submission limit, any endpoint would refuse it; anything else
            # is the endpoint's failure (raised again: the caller fails over).
            return self._failed_by(request_id, endpoint, exc)
        timeout_s = self._s.task_timeout_s - (time.time() - submitted_at)
        try:
            # The heartbeat keeps the message invisible however long this takes.
            result = future.result(timeout=max(0.0, timeout_s))
        except FutureTimeoutError as exc:
            future.cancel()
            raise TaskTimeoutError(
                f"task of {request_id} on {endpoint.name} not done after"
                f" {self._s.task_timeout_s:g} s"
            ) from exc
        except ComputeError as exc:
            # Refused by the endpoint itself (413, where the poller did not check first), a
            # result over the limit (S3 path off, or a function that ignored it), or the
            # function raised on the node: the request's failure, not retried.
            return self._failed_by(request_id, endpoint, exc)
        stored = planning.stored_result_key(request_id, result)
        if stored is not None:
            # The function PUT its large result by the task's URL: read it back.
            self.counts["results_by_url"] += 1
            result = self._blobs.get_json(stored)
        return planning.outcome_of(request_id, result, endpoint=endpoint.name)

    def _failed_by(
        self, request_id: str, endpoint: Endpoint, exc: ComputeError
    ) -> tuple[str, dict[str, Any], Any]:
        """The request's failure for what the compute adapter reported (``planning``
        translates it); an endpoint's failure is raised again, for the caller to fail over."""
        failure = planning.compute_failure(request_id, exc)
        if failure is None:
            raise exc
        if isinstance(exc, TaskTooLargeError):
            self.counts["tasks_too_large"] += 1
        elif isinstance(exc, ResultTooLargeError):
            self.counts["results_too_large"] += 1
        return "failed", {**failure, "endpoint": endpoint.name}, None

    def _finish(
        self,
        request_id: str,
        # Partial on the failure path (a request never claimed, or gone): ``{"request_id"}``.
        record: Mapping[str, Any],
        status: str,
        fields: dict[str, Any],
        response: Any,
        log: dict[str, Any],
        slot: str | None = None,
    ) -> None:
        result_text = None
        if status in ("completed", "cancelled"):  # cancelled: the response of what ran
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
                self._requests.complete(request_id, fields, slot=slot)
            elif status == "cancelled":
                self._requests.cancel(request_id, fields, slot=slot)
            else:
                self._requests.fail(request_id, fields, slot=slot)
        except RequestConflictError as exc:
            current = exc.current["status"] if exc.current else None
            self._log.info("already finished by another poller", extra={**log, "status": current})
            return
        if record.get("reply_to"):
            notice = planning.notice_for(
                request_id, status, fields, result_text, self._s.inline_limit_bytes
            )
            # Saturated (requests wait for slots): other notices follow within the linger.
            linger_s = self._s.poller_share_wait_s if self._gate.waiting() else 0.0
            if not self._replies.send(record["reply_to"], notice, linger_s=linger_s):
                self.counts["notices_undelivered"] += 1
        if record.get("stream") and self._streams is not None:
            # After the record: a client that has its done frame reads the request completed.
            self._streams.finished(request_id, record["stream"], status, fields, response)
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
        if self.accounting is not None:
            self.accounting.finished(record, status, fields)
