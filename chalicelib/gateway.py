"""The API side of a request: validate, record, enqueue, wait, answer.

``Gateway.run`` (answer over REST) and ``Gateway.submit`` (record and enqueue; what the
WebSocket route's ``StreamService`` calls with a ``StreamTarget``) are the one way in for a
request of any route or dialect: a route translates its body into a ``GatewayRequest`` and calls
one of them. A streamed request's record carries its wire dialect
(``GatewayRequest.stream_dialect``: Responses' or Messages' events instead of chat chunks), for
the relay and the poller that render its frames (``chalicelib.protocol.dialects``).

Per request this costs (warm process): one SQS send, and one SQS receive shared by every request
the reply listener wakes together. The request's record travels in its message, and the
poller's claim writes it; the API writes it itself (``RequestStore.put_new``, unless it is there)
only for a request it does not answer with a result (504, 503: the client gets the id to collect
it by) and as the read-back of a notice that is late. The record is read only when a notice is
late, the result was too large for the notice, or a client asks for it by id. A record too big
for a message (``MAX_MESSAGE_BYTES``) is written first, as before. With rate limits
configured, one conditional update per limited counter item (1–3, side by side) comes first; the
poller gives the counters back when the request finishes.

A request that cannot be answered within the wait (the API's limit, or the client's
``Prefer: wait=N``) keeps running: the client gets its id (``x-request-id`` and the error body)
to collect it with ``GET /v1/requests/{id}``: 504 when it is simply still running, 503 with
``Retry-After`` when the model has no hot deployment and is expected to start later than the
wait ends (answered at once, without waiting) or is still starting when it ends.
"""

from __future__ import annotations

import json
import math
import threading
import time
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any

from chalicelib import affinity, limits
from chalicelib.access import may_use
from chalicelib.auth import Principal
from chalicelib.ceilings import check_max_tokens
from chalicelib.errors import (
    BadRequestError,
    FirstError,
    ModelNotFoundError,
    NotFoundError,
    UpstreamUnavailableError,
    WaitTimeoutError,
    error_from_result,
)
from chalicelib.fleet import Fleet, Warming
from chalicelib.images import ImageResolver
from chalicelib.models_view import model_object, retrieve_model
from chalicelib.protocol.common import GatewayRequest
from chalicelib.registry import Registry
from chalicelib.settings import Settings
from chalicelib.stores.blobs import BlobStore, dumps
from chalicelib.stores.limits import LimitStore
from chalicelib.stores.queue import RequestQueue
from chalicelib.stores.replies import ReplyListener
from chalicelib.stores.requests import API_WRITES_AFTER_S, TERMINAL, RequestRecord, RequestStore

# A waiter re-reads the record in case its notice was lost: after 5 s, then every 10 s. A notice
# is lost only when this process stopped listening (a frozen Lambda), so the reads are a safety
# net, not the path: under load every early read is one more DynamoDB call per waiting request
# (at 256 waiting clients, reads after 2 s cost more than a third of the local AWS's CPU).
FALLBACK_READ_S = API_WRITES_AFTER_S
FALLBACK_READ_MAX_S = 10.0
# Retry-After for a model still starting is at most this (the bound; clients back off).
MAX_RETRY_AFTER_S = 120
# Side-by-side AWS calls of the request path (threads only wait on sockets).
_IO = ThreadPoolExecutor(16, thread_name_prefix="gateway-io")
# A queue message that carries its record stays under this (SQS takes 256 KiB; a record's inline
# payload is at most FIRST_INLINE_LIMIT_BYTES of text, which JSON escaping can make larger).
MAX_MESSAGE_BYTES = 192 * 1024


@dataclass(frozen=True)
class Completed:
    request_id: str
    response: dict[str, Any]
    engine_time_ms: float | None
    # x-ratelimit-* for the response (empty when no limit applies).
    headers: dict[str, str] = field(default_factory=dict)
    # The compute endpoint that ran it (x-first-endpoint), where the outcome says.
    endpoint: str | None = None


@dataclass(frozen=True)
class StreamTarget:
    """Where a streamed request's frames go: the WebSocket connection, and the client's
    reference they carry."""

    connection_id: str
    ref: str | None = None

    def to_item(self) -> dict[str, str]:
        """As the record keeps it (what makes the poller stream)."""
        return {"connection_id": self.connection_id, **({"ref": self.ref} if self.ref else {})}


@dataclass(frozen=True)
class Admission:
    headers: dict[str, str]
    # Kept on the record: what the poller gives back when the request finishes.
    hold: dict[str, Any] | None


def new_request_id() -> str:
    return f"req_{uuid.uuid4().hex}"


def still_running(request_id: str, starting_s: float | None = None) -> FirstError:
    """The answer for a request that keeps running past the wait: 504, or 503 with
    ``Retry-After`` while its model is starting; both name the id to collect it by."""
    message = (
        f"The request is still running. Fetch its result later with GET /v1/requests/{request_id}."
    )
    if starting_s is None:
        return WaitTimeoutError(message, request_id=request_id)
    retry_after = min(MAX_RETRY_AFTER_S, max(1, math.ceil(starting_s)))
    return UpstreamUnavailableError(
        f"The model is starting (expected in about {retry_after} s). {message}",
        code="model_starting",
        request_id=request_id,
        headers={"Retry-After": str(retry_after)},
    )


class Gateway:
    def __init__(
        self,
        *,
        settings: Settings,
        registry: Registry,
        requests: RequestStore,
        queue: RequestQueue,
        blobs: BlobStore,
        replies: ReplyListener,
        limits_config: limits.LimitsConfig | None = None,
        limit_store: LimitStore | None = None,
        fleet: Fleet | None = None,
        images: ImageResolver | None = None,
    ) -> None:
        self._settings = settings
        self._registry = registry
        self._requests = requests
        self._queue = queue
        self._blobs = blobs
        self._replies = replies
        self._limits = limits_config
        self._limit_store = limit_store
        self._fleet = fleet
        self._images = images
        # Records of submitted requests that only their queue message holds so far.
        self._unwritten: dict[str, RequestRecord] = {}
        self._unwritten_lock = threading.Lock()

    def list_models(self, principal: Principal) -> dict[str, Any]:
        """The models the caller may use; the others are not listed."""
        data = [
            model_object(self._registry, dep)
            for m in self._registry.model_ids()
            if (dep := self._registry.model(m)) is not None and may_use(principal, dep.access)
        ]
        if self._fleet is not None:
            data = [self._fleet.annotate(m) for m in data]
        return {"object": "list", "data": data}

    def warm(self, principal: Principal, model_id: str) -> Warming:
        """``POST /v1/models/{model}/warm``: a model the caller may not use is not found."""
        retrieve_model(self._registry, principal, model_id)
        if self._fleet is None:
            raise UpstreamUnavailableError("Warm-ups are not configured here.")
        return self._fleet.warm(model_id, self._queue.send)

    def run(
        self,
        principal: Principal,
        function: str,
        req: GatewayRequest,
        wait_s: float | None = None,
        session_id: str | None = None,
        *,
        route: str | None = None,
    ) -> Completed:
        """Run a request and answer it over REST (within the wait, else 504/503 with its id).
        ``route``: the API route it came in by when that is not ``function`` (a Responses or
        Messages call runs as chat): usage and metrics count it under that name."""
        self.authorize(principal, req, function)
        admission = self.admit(principal, req)
        try:
            request_id = self.submit(
                principal, function, req, admission.hold, session_id=session_id, route=route
            )
            done: Completed | None = None
            try:
                starting_s = self._start_wait_s(req.model, function)
                if starting_s is not None and starting_s > self._wait_limit_s(wait_s):
                    # It would not be answered in time: say so now; it still runs.
                    raise still_running(request_id, starting_s)
                try:
                    done = self.wait(request_id, wait_s)
                except WaitTimeoutError as exc:
                    starting_s = self._start_wait_s(req.model, function)
                    if starting_s is None:
                        raise
                    raise still_running(request_id, starting_s) from exc
            finally:
                self._replies.forget(request_id)
                if done is None:
                    # Not answered with its outcome: the client may collect it by id.
                    self._write_record(request_id)
        except FirstError as exc:
            exc.headers = {**admission.headers, **exc.headers}
            raise
        return replace(done, headers=admission.headers)

    def _start_wait_s(self, model: str, function: str) -> float | None:
        return self._fleet.start_wait_s(model, function) if self._fleet is not None else None

    def _wait_limit_s(self, wait_s: float | None) -> float:
        limit = self._settings.wait_timeout_s
        return limit if wait_s is None else max(0.0, min(wait_s, limit))

    def authorize(self, principal: Principal, req: GatewayRequest, function: str) -> None:
        """A model the caller may not use answers exactly like one that does not exist; one that
        cannot do what the request asks for (tools, a JSON answer, images) or asks for more
        tokens than its ceiling is a 400 naming the field. Before admission: the rate-limit
        estimate multiplies max_tokens. Images are then checked and made data URLs in ``req``
        (``chalicelib.images``)."""
        model = req.model
        if not self._registry.candidates(model, function) or not may_use(
            principal, self._registry.access(model)
        ):
            raise ModelNotFoundError(
                f"The model '{model}' does not exist or is not served for this endpoint.",
                param="model",
            )
        for capability, param in req.capabilities_used().items():
            if not self._registry.supports(model, capability):
                # A part of a message is named with what it is: "images (messages[0].content[1])".
                what = f"images ({param})" if capability == "vision" else param
                raise BadRequestError(
                    f"The model '{model}' does not support {what} (see its capabilities in"
                    f" GET /v1/models/{model}).",
                    param=param,
                    code=f"{capability}_not_supported",
                )
        check_max_tokens(self._registry.model(model), req)
        images = req.image_parts()
        if images:
            if self._images is None:
                raise BadRequestError("Images are not accepted here.", param=images[0][0])
            # Each checked and made a data URL in the body the engine gets (chalicelib/images).
            self._images.resolve_parts(principal, images)

    def admit(self, principal: Principal, req: GatewayRequest) -> Admission:
        """Count the request against the caller's and the model's limits, or raise 429."""
        if self._limits is None or self._limit_store is None:
            return Admission({}, None)
        now = time.time()
        plan = limits.plan(
            self._limits,
            principal,
            req.model,
            req,
            now,
            inflight_ttl_s=self._settings.limits_inflight_ttl_s,
        )
        if not plan.updates:
            return Admission({}, None)
        outcome = self._limit_store.admit(plan, now)
        if outcome.refused is not None:
            raise limits.rejection(plan, outcome, now)
        return Admission(limits.headers(plan, outcome, now), plan.hold())

    def submit(
        self,
        principal: Principal,
        function: str,
        req: GatewayRequest,
        hold: dict[str, Any] | None = None,
        *,
        stream: StreamTarget | None = None,
        session_id: str | None = None,
        route: str | None = None,
    ) -> str:
        """Record and enqueue an authorized, admitted request; its id. With ``stream`` its
        answer travels as frames to that connection; without, ``wait`` collects it. On failure
        the counters ``hold`` took are given back (no poller will ever finish it). ``route``
        (as for ``run``) rides on the record for the accounting."""
        try:
            return self._submit(principal, function, req, hold, stream, session_id, route)
        except Exception:
            if hold is not None and self._limit_store is not None:
                self._limit_store.release(hold, 0)
            raise

    def _submit(
        self,
        principal: Principal,
        function: str,
        req: GatewayRequest,
        hold: dict[str, Any] | None,
        stream: StreamTarget | None,
        session_id: str | None = None,
        route: str | None = None,
    ) -> str:
        request_id = new_request_id()
        body, routing = affinity.prepare(self._settings, principal, req, session_id)
        item = {
            "request_id": request_id,
            "owner": principal.id,
            "model": req.model,
            "function": function,
            # The engine runs ``function``; usage and metrics count the route the call came by.
            **({"route": route} if route and route != function else {}),
            # A stream's answer goes to its connection; no reply listener waits for it.
            **(
                {"stream": {**stream.to_item(), **req.stream_dialect()}}
                if stream
                else {"reply_to": self._replies.url}
            ),
            **routing,
            **({"limits": hold} if hold else {}),
            **self._blobs.fields(
                "payload",
                dumps(body),
                f"requests/{request_id}/payload.json",
                self._settings.inline_limit_bytes,
            ),
        }
        carried = False
        written: Future[None] | None = None
        if stream is not None:
            # The record before the message: no reply listener waits for a stream, so nothing
            # is gained by racing them, and a poller never meets a message without its record.
            self._requests.create(item)
            message = json.dumps({"request_id": request_id})
        else:
            self._replies.expect(request_id)
            record = self._requests.new(item)
            message = json.dumps({"request_id": request_id, "record": record})
            carried = len(message.encode()) <= MAX_MESSAGE_BYTES
            if carried:
                with self._unwritten_lock:
                    self._unwritten[request_id] = record
            else:
                # Too big to travel in the message: written first, the message names it (the
                # record write and the enqueue side by side; a poller that wins the race
                # re-reads a missing record briefly).
                message = json.dumps({"request_id": request_id})
                written = _IO.submit(self._requests.create, item)
        try:
            self._queue.send(message)
        except Exception as exc:
            if written is not None:
                written.result()
            elif carried:
                self._forget_record(request_id)
                self._requests.create(item)
            # Never leave a record queued that no poller will ever see.
            self._requests.fail(
                request_id, UpstreamUnavailableError("The request could not be queued.").to_record()
            )
            raise UpstreamUnavailableError(
                "The request could not be queued; try again.", request_id=request_id
            ) from exc
        # If the write failed, the message names no record: pollers drop it to the DLQ.
        if written is not None:
            written.result()
        return request_id

    def detach(self, request_id: str) -> None:
        """The client takes the id of a submitted request now and collects its outcome by it
        (a job, ``chalicelib/jobs.py``): no waiter expects its notice, and its record is
        written, unless the poller's claim wrote it first, before the id is handed out."""
        self._replies.forget(request_id)
        self._write_record(request_id)

    def _write_record(self, request_id: str) -> RequestRecord | None:
        """Write the record only the message holds (unless the poller did): a client is about
        to get this request's id. The record as it is when the poller was first, else None."""
        with self._unwritten_lock:
            record = self._unwritten.pop(request_id, None)
        if record is None:
            return None
        return self._requests.put_new(record)

    def _forget_record(self, request_id: str) -> None:
        with self._unwritten_lock:
            self._unwritten.pop(request_id, None)

    def _read_back(self, request_id: str) -> RequestRecord | None:
        """The record, read because a notice is late: written now if only the message holds
        it (one call either way: ``put_new`` answers with the record it finds)."""
        with self._unwritten_lock:
            unwritten = request_id in self._unwritten
        if unwritten:
            return self._write_record(request_id)
        return self._requests.get(request_id)

    def wait(self, request_id: str, wait_s: float | None = None) -> Completed:
        """Wait at most ``wait_s`` (capped by the settings' bound) for the outcome."""
        deadline = time.monotonic() + self._wait_limit_s(wait_s)
        interval = FALLBACK_READ_S
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self._write_record(request_id)
                raise still_running(request_id)
            notice = self._replies.wait(request_id, min(interval, remaining))
            interval = min(interval * 2, FALLBACK_READ_MAX_S)
            if notice is not None and notice.get("status") in TERMINAL:
                self._forget_record(request_id)  # the poller wrote it
                if "result" in notice or "error" in notice:
                    return self._answer(request_id, notice)
                record = self._requests.get(request_id)
            else:
                record = self._read_back(request_id)
                if record is None or record["status"] not in TERMINAL:
                    continue
                self._forget_record(request_id)
            assert record is not None
            return self._answer(request_id, self._outcome(record))

    def _outcome(self, record: RequestRecord) -> dict[str, Any]:
        return {
            "status": record["status"],
            "result": self._blobs.load(record, "result"),
            "error": record.get("error"),
            "status_code": record.get("status_code"),
            "engine_time_ms": record.get("engine_time_ms"),
            "endpoint": record.get("endpoint"),
        }

    def _answer(self, request_id: str, outcome: dict[str, Any]) -> Completed:
        if outcome["status"] == "completed":
            return Completed(
                request_id,
                outcome["result"],
                outcome.get("engine_time_ms"),
                endpoint=outcome.get("endpoint"),
            )
        raise error_from_result(
            outcome.get("error") or {}, int(outcome.get("status_code") or 500), request_id
        )

    def fetch(self, principal: Principal, request_id: str) -> dict[str, Any]:
        # Someone else's request answers exactly like a missing one, and as fast: the store
        # filters on the owner before anything of the record leaves DynamoDB.
        record = self._requests.get_owned(request_id, principal.id)
        if record is None:
            raise NotFoundError(f"No request found with id '{request_id}'.", param="request_id")
        view: dict[str, Any] = {
            "id": request_id,
            "object": "request",
            "status": record["status"],
            "model": record.get("model"),
            "endpoint": record.get("function"),
            "created_at": record.get("created_at"),
            # The Globus Compute endpoint that ran it ("endpoint" above is the route).
            "compute_endpoint": record.get("endpoint"),
            "result": None,
            "error": None,
        }
        if record["status"] in ("completed", "cancelled"):
            # Cancelled: a stream its client left; the result holds the tokens that ran.
            view["result"] = self._blobs.load(record, "result")
        elif record["status"] == "failed":
            try:
                self._answer(request_id, self._outcome(record))
            except FirstError as exc:
                view["error"] = exc.to_body()["error"]
                # The status the request would have answered with: a client that collects a
                # 504'd request (first proxy) answers what the wait would have.
                view["status_code"] = exc.STATUS_CODE
        return view
