"""Capability tokens bind one request to one connection, and expire (issue 12, "Secrets").

``test_streaming.py`` covers forged, edited and expired tokens at ``verify``; these follow a
token from where the poller mints it (``StreamNotifier.task_fields``) to where the relay spends
it, and show the push itself cannot redirect it: whatever the pushed body says, its chunks go to
the token's connection, under the token's request id, and only until the token's expiry.
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from aws_lambda_powertools import Logger
from pydantic import SecretStr

from chalicelib.auth.sealed import SealError, seal, unseal
from chalicelib.errors import AuthenticationError
from chalicelib.settings import Settings
from chalicelib.streaming.notifier import StreamNotifier
from chalicelib.streaming.relay import Relay
from chalicelib.streaming.tokens import StreamTokenError, verify

KEY = "k" * 32
TTL_S = 60


class RecordingPoster:
    def __init__(self) -> None:
        self.posts: list[tuple[str, dict[str, Any]]] = []

    def post(self, connection_id: str, text: str) -> None:
        self.posts.append((connection_id, json.loads(text)))


def notifier() -> StreamNotifier:
    settings = Settings(stream_key=SecretStr(KEY), stream_token_ttl_s=TTL_S)
    return StreamNotifier(settings, RecordingPoster(), Logger(service="test"))  # type: ignore[arg-type]


def token_for(request_id: str, connection_id: str, ref: str) -> str:
    fields = notifier().task_fields(request_id, {"connection_id": connection_id, "ref": ref})
    return str(fields["token"])


def push(seq: int, **extra: Any) -> bytes:
    chunk = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m"}
    chunk["choices"] = [{"index": 0, "delta": {"content": "x"}, "finish_reason": None}]
    return json.dumps({"seq": seq, "chunks": [chunk], **extra}).encode()


def test_the_poller_s_token_names_its_request_and_connection_and_expires_after_the_ttl() -> None:
    before = time.time()
    token = token_for("req_a", "conn-a", "ref-a")
    claims = verify(KEY.encode(), token)
    assert (claims.request_id, claims.connection_id, claims.client_ref) == (
        "req_a",
        "conn-a",
        "ref-a",
    )
    assert int(before) + TTL_S <= claims.expires_at <= time.time() + TTL_S
    with pytest.raises(StreamTokenError, match="expired"):
        verify(KEY.encode(), token, now=claims.expires_at)


def test_a_push_cannot_redirect_its_token_to_another_request_or_connection() -> None:
    poster = RecordingPoster()
    relay = Relay(KEY.encode(), poster)  # type: ignore[arg-type]
    token = token_for("req_a", "conn-a", "ref-a")
    # The body names request B's connection, id and reference: the relay reads none of it.
    hijack = push(1, request_id="req_b", connection_id="conn-b", id="ref-b", ref="ref-b")
    assert relay.push(token, hijack).request_id == "req_a"
    assert [(conn, f["request_id"], f["id"]) for conn, f in poster.posts] == [
        ("conn-a", "req_a", "ref-a")
    ]


def test_tokens_of_two_requests_never_cross() -> None:
    poster = RecordingPoster()
    relay = Relay(KEY.encode(), poster)  # type: ignore[arg-type]
    a = token_for("req_a", "conn-a", "ref-a")
    b = token_for("req_b", "conn-b", "ref-b")
    relay.push(a, push(1))
    relay.push(b, push(1))  # the same seq: request B's, not a retry of A's
    relay.push(a, push(1))  # a retry of A's: not posted again, and never to B
    assert [(conn, f["request_id"]) for conn, f in poster.posts] == [
        ("conn-a", "req_a"),
        ("conn-b", "req_b"),
    ]


def test_an_expired_token_is_refused_by_the_relay_and_posts_nothing() -> None:
    poster = RecordingPoster()
    settings = Settings(stream_key=SecretStr(KEY), stream_token_ttl_s=-1)
    fields = StreamNotifier(settings, poster, Logger(service="test")).task_fields(  # type: ignore[arg-type]
        "req_a", {"connection_id": "conn-a", "ref": None}
    )
    with pytest.raises(AuthenticationError) as caught:
        Relay(KEY.encode(), poster).push(fields["token"], push(1))  # type: ignore[arg-type]
    assert caught.value.code == "expired_stream_token" and poster.posts == []


# -- a connection's sealed credential (chalicelib/auth/sealed.py) ---------------------------


def test_a_sealed_credential_opens_only_with_its_key_and_for_its_connection() -> None:
    key = KEY.encode()
    sealed = seal(key, "sk-first-secret", "conn-a")
    assert "sk-first-secret" not in sealed and seal(key, "sk-first-secret", "conn-a") != sealed
    assert unseal(key, sealed, "conn-a") == "sk-first-secret"
    flipped = sealed[:20] + ("A" if sealed[20] != "A" else "B") + sealed[21:]
    for text, context, with_key in (
        (sealed, "conn-b", key),  # moved to another connection's record
        (sealed, "conn-a", b"another gateway's key"),
        (flipped, "conn-a", key),  # edited
        ("not base64 !", "conn-a", key),
        ("", "conn-a", key),
    ):
        with pytest.raises(SealError):
            unseal(with_key, text, context)
    with pytest.raises(SealError):
        seal(b"", "sk-first-secret", "conn-a")  # no stream key: nothing to seal with
