"""The Responses API's routes' work: create (plain, streamed, background), retrieve, delete,
input items, cancel. A response is a chat completion underneath (``protocol.responses``): it
takes the gateway's one submission path (``Gateway.run``, or ``authorize``/``admit``/``submit``
without waiting for ``background``), and its state belongs to the gateway, not an engine: a
stored response (``store``, the default) keeps its input items and its output under its owner
(``stores.responses``), and ``previous_response_id`` rebuilds the conversation from them, so
any endpoint can serve the next turn.

A background response is materialized when it is read: its item names the gateway request, and
``retrieve`` turns that request's chat result into the response object (and stores it).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from chalicelib.auth import Principal
from chalicelib.ceilings import check_max_tokens
from chalicelib.errors import BadRequestError, NotFoundError
from chalicelib.gateway import Gateway
from chalicelib.protocol import dialects, parse_body
from chalicelib.protocol import responses as rp
from chalicelib.protocol.responses_stream import RESPONSES, first_state
from chalicelib.registry import Registry
from chalicelib.settings import Settings
from chalicelib.stores.blobs import BlobStore, dumps
from chalicelib.stores.responses import ResponseStore

# How far back previous_response_id is followed (each link is one read).
MAX_CHAIN = 100
# input_items pages (OpenAI's default and largest page).
DEFAULT_PAGE = 20
MAX_PAGE = 100
# Gateway request status → the background response's status while it runs.
_RUNNING = {"queued": "queued", "dispatched": "in_progress"}


@dataclass(frozen=True)
class Created:
    body: dict[str, Any] | str  # the response object, or a text/event-stream body
    request_id: str | None
    headers: dict[str, str] = field(default_factory=dict)
    usage: dict[str, Any] | None = None

    @property
    def streamed(self) -> bool:
        return isinstance(self.body, str)


def _not_found(response_id: str, param: str = "response_id") -> NotFoundError:
    return NotFoundError(f"No response found with id '{response_id}'.", param=param)


class ResponsesApi:
    def __init__(
        self,
        *,
        settings: Settings,
        gateway: Gateway,
        registry: Registry,
        store: ResponseStore,
        blobs: BlobStore,
    ) -> None:
        self._s = settings
        self._gateway = gateway
        self._registry = registry
        self._store = store
        self._blobs = blobs

    # -- create ---------------------------------------------------------------------------

    def create(self, principal: Principal, raw: bytes, wait_s: float | None = None) -> Created:
        req = parse_body(raw, rp.ResponsesRequest)
        if req.background and req.stream:
            raise BadRequestError(
                "background with stream is not supported here: create it in the background, "
                "then retrieve it.",
                param="stream",
            )
        if req.background and req.store is False:
            raise BadRequestError("A background response must be stored.", param="store")
        history = self._history(principal, req.previous_response_id)
        chat = rp.to_chat(req, history)
        base = rp.skeleton(req, rp.new_response_id())
        items = _with_ids(base["id"], req.input_items())
        if req.background:
            return self._background(principal, req, chat, base, items)
        done = self._gateway.run(principal, "chat_completions", chat, wait_s, route=RESPONSES.name)
        response = rp.response_from_chat(base, done.response)
        if req.store is not False:
            self._save(principal, base, items, done.request_id, response)
        body: dict[str, Any] | str = response
        if req.stream:
            body = dialects.render_buffered(RESPONSES, first_state(base), done.response)
        return Created(body, done.request_id, done.headers, done.response.get("usage"))

    def _background(
        self,
        principal: Principal,
        req: rp.ResponsesRequest,
        chat: Any,
        base: dict[str, Any],
        items: list[dict[str, Any]],
    ) -> Created:
        """Queued at once; the response is retrieved (materialized) later."""
        self._gateway.authorize(principal, chat, "chat_completions")
        check_max_tokens(self._registry.model(chat.model), chat)
        admission = self._gateway.admit(principal, chat)
        request_id = self._gateway.submit(
            principal, "chat_completions", chat, admission.hold, route=RESPONSES.name
        )
        queued = {**base, "status": "queued"}
        self._save(principal, queued, items, request_id, None)
        return Created(queued, request_id, admission.headers)

    def _save(
        self,
        principal: Principal,
        base: dict[str, Any],
        items: list[dict[str, Any]],
        request_id: str,
        response: dict[str, Any] | None,
    ) -> None:
        rid = base["id"]
        now = int(time.time())
        limit = self._s.inline_limit_bytes
        item: dict[str, Any] = {
            "owner": principal.id,
            "response_id": rid,
            "request_id": request_id,
            "created_at": now,
            "expires_at": now + self._s.responses_ttl_s,
            "previous_response_id": base.get("previous_response_id"),
            **self._blobs.fields("input", dumps(items), f"responses/{rid}/input.json", limit),
            **self._blobs.fields(
                "response", dumps(response or base), f"responses/{rid}/response.json", limit
            ),
            "status": (response or base)["status"],
        }
        self._store.create({k: v for k, v in item.items() if v is not None})

    def _history(self, principal: Principal, previous_id: str | None) -> list[dict[str, Any]]:
        """The conversation before this turn: every earlier response's input items and output,
        oldest first. Unknown, deleted, expired or another user's: 404 naming the field."""
        turns: list[list[dict[str, Any]]] = []
        seen: set[str] = set()
        at = previous_id
        while at is not None:
            if at in seen:
                raise BadRequestError(
                    f"previous_response_id: the chain of responses loops at '{at}'.",
                    param="previous_response_id",
                )
            if len(seen) >= MAX_CHAIN:
                raise BadRequestError(
                    f"previous_response_id: the conversation is longer than {MAX_CHAIN} "
                    "responses; start a new one with its input.",
                    param="previous_response_id",
                )
            seen.add(at)
            item = self._store.get(principal.id, at)
            if item is None:
                raise _not_found(at, "previous_response_id")
            response = self._materialize(principal, item)
            if response["status"] not in ("completed", "incomplete"):
                raise BadRequestError(
                    f"previous_response_id: the response '{at}' is {response['status']}; only a "
                    "finished response can be continued.",
                    param="previous_response_id",
                )
            turns.append(self._blobs.load(item, "input") + response["output"])
            at = item.get("previous_response_id")
        return [entry for turn in reversed(turns) for entry in turn]

    # -- retrieve, delete, input items, cancel --------------------------------------------

    def _item(self, principal: Principal, response_id: str) -> dict[str, Any]:
        item = self._store.get(principal.id, response_id)
        if item is None:
            raise _not_found(response_id)
        return item

    def retrieve(self, principal: Principal, response_id: str) -> dict[str, Any]:
        return self._materialize(principal, self._item(principal, response_id))

    def _materialize(self, principal: Principal, item: dict[str, Any]) -> dict[str, Any]:
        """The stored response; a background one still marked running is read from its
        gateway request, and stored once it has finished."""
        response: dict[str, Any] = self._blobs.load(item, "response")
        if response["status"] not in ("queued", "in_progress"):
            return response
        try:
            view = self._gateway.fetch(principal, str(item["request_id"]))
        except NotFoundError:  # the request record expired before anyone read the response
            view = {"status": "failed", "error": {"code": "expired", "message": "expired"}}
        status = view["status"]
        if status in _RUNNING:
            return {**response, "status": _RUNNING[status]}
        if status == "completed":
            final = rp.response_from_chat(response, view["result"])
        elif status == "cancelled":
            final = {**response, "status": "cancelled"}
        else:
            final = rp.failed_response(response, view.get("error") or {})
        self._store_final(principal, item, final)
        return final

    def _store_final(
        self, principal: Principal, item: dict[str, Any], final: dict[str, Any]
    ) -> None:
        rid = item["response_id"]
        fields = self._blobs.fields(
            "response", dumps(final), f"responses/{rid}/response.json", self._s.inline_limit_bytes
        )
        if "response_key" in fields:
            fields["response"] = None
        self._store.update(principal.id, rid, {**fields, "status": final["status"]})

    def delete(self, principal: Principal, response_id: str) -> dict[str, Any]:
        if self._store.delete(principal.id, response_id) is None:
            raise _not_found(response_id)
        return {"id": response_id, "object": "response.deleted", "deleted": True}

    def input_items(
        self, principal: Principal, response_id: str, query: dict[str, str]
    ) -> dict[str, Any]:
        item = self._item(principal, response_id)
        items: list[dict[str, Any]] = self._blobs.load(item, "input")
        order = query.get("order", "desc")
        if order not in ("asc", "desc"):
            raise BadRequestError("order must be asc or desc.", param="order")
        try:
            limit = int(query.get("limit", DEFAULT_PAGE))
        except ValueError:
            limit = 0
        if not 1 <= limit <= MAX_PAGE:
            raise BadRequestError(f"limit must be an integer from 1 to {MAX_PAGE}.", param="limit")
        if order == "desc":
            items = items[::-1]
        after = query.get("after")
        if after is not None:
            ids = [i.get("id") for i in items]
            if after not in ids:
                raise BadRequestError(f"No input item with id '{after}'.", param="after")
            items = items[ids.index(after) + 1 :]
        page = items[:limit]
        return {
            "object": "list",
            "data": page,
            "first_id": page[0]["id"] if page else None,
            "last_id": page[-1]["id"] if page else None,
            "has_more": len(items) > limit,
        }

    def cancel(self, principal: Principal, response_id: str) -> dict[str, Any]:
        """A background response stops being waited for: it answers ``cancelled`` from now on
        (the generation itself runs to its end: interactive requests have no cancel path)."""
        item = self._item(principal, response_id)
        response = self._materialize(principal, item)
        if not response.get("background"):
            raise BadRequestError(
                "Only a background response can be cancelled.", param="response_id"
            )
        if response["status"] in ("queued", "in_progress"):
            response = {**response, "status": "cancelled"}
            self._store_final(principal, item, response)
        return response


def _with_ids(response_id: str, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Input items as ``input_items`` lists them: each with an id (its own, or one made here)."""
    short = response_id.removeprefix("resp_")
    out = []
    for i, item in enumerate(items):
        entry = {**item}
        if entry.get("type") == "message":
            entry.setdefault("status", "completed")
            content = entry.get("content")
            if isinstance(content, str):
                kind = "output_text" if entry.get("role") == "assistant" else "input_text"
                entry["content"] = [{"type": kind, "text": content}]
        entry.setdefault("id", f"in_{short}_{i}")
        out.append(entry)
    return out
