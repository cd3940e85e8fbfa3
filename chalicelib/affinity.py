"""Which requests belong together, and whose cached prefixes a request may reuse (API side).

**Affinity key.** Requests of one conversation should run where their growing prompt's prefix
is already cached (vLLM's automatic prefix caching keeps it on the server that saw it). The
conversation is named, first match wins, by:

1. the body's ``prompt_cache_key`` (OpenAI's field, chat and completions);
2. the ``X-Session-ID`` header;
3. a chain the dialect knows (Responses' ``previous_response_id``: the dialect passes the id of
   the chain's first response to ``key_for`` as ``conversation``);
4. otherwise the conversation's opening (chat: the messages up to the first user message; a
   completions prompt), rendered here and cut at ``affinity_prefix_chars`` (``prompt_prefix``):
   every turn of a conversation resends it unchanged, so they share the key. (The first N
   characters of the whole prompt would not do: a conversation shorter than N changes them
   every turn; measured with bench/affinity.py, follow-ups then land at home by chance.)

The key is ``HMAC-SHA256(affinity_key, user | model | kind | conversation)``, truncated: it says
nothing about the user or the text, two users' identical prompts get different keys, and it
travels on the request record (``affinity``) to the poller, which routes by it
(``chalicelib/router.py`` ``prefer_home``).

**Cache salt.** Each request the gateway queues carries ``cache_salt`` (vLLM's field: only
requests with the same salt share cached blocks), ``HMAC(affinity_key, "user" | user id)``, or
``"group" | name`` for members of a group in ``cache_salt_groups`` (a team sharing a long system
prompt shares its cache). A salt a client sends is replaced: no one can pick another's.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from chalicelib.auth import Principal
from chalicelib.protocol.common import GatewayRequest, SamplingFields
from chalicelib.settings import Settings

SESSION_HEADER = "x-session-id"
# Hex characters kept of each HMAC: 128 bits, far from any collision at any traffic.
KEY_HEX = 32


@dataclass(frozen=True)
class Affinity:
    key: str | None
    # None for requests that generate nothing (embeddings): no prefix cache to isolate.
    salt: str | None

    def body(self, body: dict[str, Any]) -> dict[str, Any]:
        """The engine body with this request's salt (replacing any the client sent)."""
        return body if self.salt is None else {**body, "cache_salt": self.salt}

    def fields(self) -> dict[str, Any]:
        """The request record's field the poller routes by (none without a key)."""
        return {} if self.key is None else {"affinity": self.key}


def _mac(secret: bytes, *parts: str) -> str:
    message = "\x1f".join(parts).encode()
    return hmac.new(secret, message, hashlib.sha256).hexdigest()[:KEY_HEX]


def key_for(settings: Settings, user: str, model: str, kind: str, conversation: str) -> str:
    """The affinity key of ``conversation`` (a value of ``kind``: ``prompt_cache_key``,
    ``session``, ``response``, ``prefix``) of ``user`` on ``model``. What a dialect with its own
    chain (Responses' ``previous_response_id``) calls with the chain's first id."""
    return _mac(settings.affinity_key_bytes, user, model, kind, conversation)


def prompt_prefix(body: Mapping[str, Any], chars: int) -> str | None:
    """The conversation's opening, rendered canonically, cut at ``chars`` characters: chat's
    messages up to and including the first user message (what every later turn resends
    unchanged, however short), a completions prompt's first characters. None: no prompt."""
    if "messages" in body:
        messages = list(body["messages"] or [])
        first_user = next(
            (i for i, m in enumerate(messages) if isinstance(m, dict) and m.get("role") == "user"),
            len(messages) - 1,
        )
        text = json.dumps(messages[: first_user + 1], sort_keys=True, separators=(",", ":"))
    elif isinstance(body.get("prompt"), str):
        text = body["prompt"]
    elif "prompt" in body:
        text = json.dumps(body["prompt"], separators=(",", ":"))
    else:
        return None
    return text[:chars]


def cache_salt(settings: Settings, principal: Principal) -> str:
    shared = next((g for g in settings.cache_salt_groups if g in principal.groups), None)
    if shared is not None:
        return _mac(settings.affinity_key_bytes, "group", shared)
    return _mac(settings.affinity_key_bytes, "user", principal.id)


def of_request(
    settings: Settings,
    principal: Principal,
    req: GatewayRequest,
    body: Mapping[str, Any],
    session_id: str | None = None,
) -> Affinity:
    """The request's affinity key (None when affinity is off or nothing names a prompt) and
    its cache salt."""
    salt = cache_salt(settings, principal) if isinstance(req, SamplingFields) else None
    if not settings.affinity:
        return Affinity(None, salt)
    named = getattr(req, "prompt_cache_key", None)
    if named:
        kind, conversation = "prompt_cache_key", str(named)
    elif session_id:
        kind, conversation = "session", session_id
    else:
        prefix = prompt_prefix(body, settings.affinity_prefix_chars)
        if prefix is None:
            return Affinity(None, salt)
        kind, conversation = "prefix", prefix
    return Affinity(key_for(settings, principal.id, req.model, kind, conversation), salt)


def session_id(headers: Mapping[str, str]) -> str | None:
    """``X-Session-ID`` (header names are case-insensitive), or None."""
    value = next((v for k, v in headers.items() if k.lower() == SESSION_HEADER), None)
    return value.strip()[:1024] or None if value else None


def prepare(
    settings: Settings, principal: Principal, req: GatewayRequest, session_id: str | None = None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The engine body (salted) and the record fields (``affinity``) of a request to queue."""
    body = req.engine_body()
    found = of_request(settings, principal, req, body, session_id)
    return found.body(body), found.fields()
