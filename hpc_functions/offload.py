"""Large request bodies and results by S3, on the HPC node, for every interactive task.

Globus Compute refuses a submission over 5 MB and a result over 512 KB; the gateway takes bodies
up to 6 MB, and 2,048 embeddings make ~9.6 MB. So the poller sends what is large by presigned
URL (the node holds no AWS credentials), as batch shards already travel (``hpc_functions.batch``):

- ``{"body_from": {"url": GET url, "bytes": n}}`` in place of ``"body"``: ``fetch_body`` reads it;
- ``{"result_to": {"url": PUT url, "key": str, "over_bytes": n}}``: ``store_result`` PUTs a
  result whose JSON is over ``over_bytes`` there and returns ``{"result_at": {"key", "bytes"}}``
  instead; a smaller result is returned as it is, with no S3 call.

Self-contained like every HPC function: standard library and ``requests`` only, imported inside.
"""

from __future__ import annotations

from typing import Any

# Generous: 6 MB over a cluster's uplink; a failure fails the task (the gateway reports it).
TRANSFER_TIMEOUT_S = 120.0


class PresignedUrlError(RuntimeError):
    """A body or result could not cross its presigned URL (named without its signature). The
    gateway reads this name in the remote failure: the endpoint's reach to S3 failed, not the
    request, so it runs the request elsewhere."""


def fetch_body(task: dict[str, Any]) -> dict[str, Any]:
    """``task`` with its ``body``: fetched from ``body_from`` when it is there."""
    source = task.get("body_from")
    if not isinstance(source, dict):
        return task
    import json

    import requests

    try:
        got = requests.get(source["url"], timeout=TRANSFER_TIMEOUT_S)
        got.raise_for_status()
    except requests.RequestException as exc:
        raise PresignedUrlError(f"could not fetch the request body: {_no_query(exc)}") from None
    out = {k: v for k, v in task.items() if k != "body_from"}
    out["body"] = json.loads(got.content)
    return out


def store_result(task: dict[str, Any], result: dict[str, Any]) -> dict[str, Any]:
    """``result``, or a pointer to it once stored by ``result_to`` when its JSON is larger than
    ``over_bytes``."""
    target = task.get("result_to")
    if not isinstance(target, dict):
        return result
    import json

    data = json.dumps(result, separators=(",", ":")).encode()
    if len(data) <= int(target["over_bytes"]):
        return result
    import requests

    try:
        # No Content-Type: a header the URL was not signed with would break a SigV2 signature.
        put = requests.put(target["url"], data=data, timeout=TRANSFER_TIMEOUT_S)
        put.raise_for_status()
    except requests.RequestException as exc:
        raise PresignedUrlError(
            f"could not store the result ({len(data)} bytes): {_no_query(exc)}"
        ) from None
    return {"result_at": {"key": target["key"], "bytes": len(data)}}


def _no_query(exc: Exception) -> str:
    """The error's text without a URL's query (the signature): it reaches logs and tracebacks."""
    import re

    return re.sub(r"\?\S*", "?…", str(exc))
