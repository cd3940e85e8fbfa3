"""The API Gateway Management API of the WebSocket API: post a frame to one connection.

The endpoint is per WebSocket API (``https://{api-id}.execute-api.{region}.amazonaws.com/{stage}``
on AWS, the local API server offline), so it comes from settings rather than from an event as
Chalice's own ``websocket_api`` builds it. AWS errors enter as ours: ``GoneException`` (the
client went away) as ``ConnectionGoneError``, ``PayloadTooLargeException`` (a frame over API
Gateway's 128 KB) as ``FrameTooLargeError``.
"""

from __future__ import annotations

from typing import Any

from botocore.exceptions import ClientError

from chalicelib.stores import StoreError

# API Gateway's limit on one WebSocket frame (message), the same both ways; it cannot be raised.
MAX_FRAME_BYTES = 128 * 1024


class ConnectionGoneError(StoreError):
    """The WebSocket connection is closed: nothing posted to it will ever arrive."""


class FrameTooLargeError(StoreError):
    """API Gateway refused a frame over ``MAX_FRAME_BYTES``: it will never be delivered."""


class ConnectionPoster:
    def __init__(self, client: Any) -> None:
        self._client = client

    def post(self, connection_id: str, text: str) -> None:
        try:
            self._client.post_to_connection(ConnectionId=connection_id, Data=text.encode())
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code")
            if code == "GoneException":
                raise ConnectionGoneError(f"connection {connection_id} is gone") from exc
            if code == "PayloadTooLargeException":
                raise FrameTooLargeError(
                    f"a frame of {len(text.encode())} bytes for {connection_id}"
                ) from exc
            raise

    def close(self, connection_id: str) -> None:
        try:
            self._client.delete_connection(ConnectionId=connection_id)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "GoneException":
                raise
