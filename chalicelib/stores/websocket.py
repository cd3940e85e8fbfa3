"""The API Gateway Management API of the WebSocket API: post a frame to one connection.

The endpoint is per WebSocket API (``https://{api-id}.execute-api.{region}.amazonaws.com/{stage}``
on AWS, the local API server offline), so it comes from settings rather than from an event as
Chalice's own ``websocket_api`` builds it. ``GoneException`` (the client went away) enters as
``ConnectionGoneError``.
"""

from __future__ import annotations

from typing import Any

from botocore.exceptions import ClientError

from chalicelib.stores import StoreError


class ConnectionGoneError(StoreError):
    """The WebSocket connection is closed: nothing posted to it will ever arrive."""


class ConnectionPoster:
    def __init__(self, client: Any) -> None:
        self._client = client

    def post(self, connection_id: str, text: str) -> None:
        try:
            self._client.post_to_connection(ConnectionId=connection_id, Data=text.encode())
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "GoneException":
                raise ConnectionGoneError(f"connection {connection_id} is gone") from exc
            raise

    def close(self, connection_id: str) -> None:
        try:
            self._client.delete_connection(ConnectionId=connection_id)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "GoneException":
                raise
