"""The compute adapter's errors: what an executor reports about a task, in its own words.

::

    ComputeError                    a task could not be run, or ran and failed
    ├── TaskTooLargeError           over the service's submission limit: the request's failure
    ├── RemoteTaskError             the function raised on the node: the request's failure
    │   └── ResultTooLargeError     its result over the service's limit: the request's failure
    └── EndpointFailedError         the endpoint failed, not the request: run it elsewhere
        ├── EndpointUnreachableError    the (local) endpoint did not answer, or answered an error
        ├── TaskLostError               the endpoint lost the task with its worker
        ├── TransferFailedError         the node could not use the task's presigned URLs
        └── TaskTimeoutError            the task ran past ``FIRST_TASK_TIMEOUT_S``

None carries an HTTP status: the poller translates them, in one place
(``chalicelib.poller.planning.compute_failure``), into the request's failure or a fail-over.
"""

from __future__ import annotations

import re

# How the SDK names a result over the service's limit, and its sizes as its message gives them
# ("Task result of 9600123B exceeded current limit of 524288B") or its repr does
# ("MaxResultSizeExceeded(9600123, 524288)").
_RESULT_TOO_LARGE = "MaxResultSizeExceeded"
_RESULT_SIZES = re.compile(
    r"Task result of (\d+)B exceeded current limit of (\d+)B|"
    r"MaxResultSizeExceeded\((\d+),\s*(\d+)\)"
)
# How an HPC function names a presigned URL it could not use (hpc_functions.offload).
_TRANSFER_FAILED = "PresignedUrlError"
# How Globus Compute reports a task whose worker died: parsl's WorkerLost ("Task failure due to
# loss of worker N on host H"), as the SDK's TaskExecutionFailed looks for it.
_WORKER_LOST = re.compile(r"\s*parsl\.\S+\.WorkerLost:")


class ComputeError(Exception):
    """A task could not be run, or ran and failed."""


class TaskTooLargeError(ComputeError):
    """A task over the service's submission limit, refused before it is sent. The request's
    own failure: every Globus Compute endpoint has the limit, so it is neither retried nor
    failed over."""

    def __init__(self, size_bytes: int, limit_bytes: int) -> None:
        super().__init__(
            f"the task is {size_bytes} bytes as submitted, over Globus Compute's submission"
            f" limit of {limit_bytes} bytes"
        )
        self.size_bytes = size_bytes
        self.limit_bytes = limit_bytes


class RemoteTaskError(ComputeError):
    """The function raised on the endpoint; the message is the remote exception's text (for a
    remote traceback, its last line: the exception; the whole text stays in ``remote_data``)."""

    def __init__(self, message: str, remote_data: str | None = None) -> None:
        super().__init__(message)
        self.remote_data = remote_data if remote_data is not None else message


class ResultTooLargeError(RemoteTaskError):
    """The endpoint refused the task's result as over the service's result limit
    (``MaxResultSizeExceeded``): the request's failure, run again it would fail again. The
    sizes are read from the SDK's message where it has one."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        found = _RESULT_SIZES.search(text)
        sizes = [int(n) for n in found.groups() if n is not None] if found else []
        self.size_bytes: int | None = sizes[0] if sizes else None
        self.limit_bytes: int | None = sizes[1] if sizes else None


class EndpointFailedError(ComputeError):
    """The endpoint failed, not the request: the poller runs it on another endpoint (or again,
    bounded by the queue's redrive) and counts the failure on the endpoint's circuit."""


class EndpointUnreachableError(EndpointFailedError):
    """The endpoint could not be reached, or answered its API with an error."""


class TaskLostError(EndpointFailedError):
    """The endpoint lost the task with its worker: the infrastructure failed, not the request,
    so the poller runs it again (bounded by the queue's redrive)."""


class TransferFailedError(EndpointFailedError):
    """The node could not fetch the body or store the result by the task's presigned URL:
    that endpoint's reach to S3 failed, not the request, so the poller runs it elsewhere."""


class TaskTimeoutError(EndpointFailedError):
    """A task ran past ``FIRST_TASK_TIMEOUT_S``: the poller moves the request to another
    deployment (the task itself cannot be cancelled on Globus Compute and is abandoned)."""


def remote_error(text: str) -> ComputeError:
    """The function's failure reported by the endpoint, the result limit, the node's transfers
    and a dead worker told apart."""
    if _WORKER_LOST.search(text):
        # The worker died under the task (parsl's WorkerLost): the infrastructure's failure.
        return TaskLostError(_last_line(text))
    if _TRANSFER_FAILED in text:
        # Only the last line: its own words, not the remote traceback.
        return TransferFailedError(_last_line(text))
    if _RESULT_TOO_LARGE in text:
        return ResultTooLargeError(text)
    return RemoteTaskError(_last_line(text), text)


def _last_line(text: str) -> str:
    """A remote traceback's last line (the exception), past the engine's +++ / --- rules."""
    lines = [line.strip() for line in text.splitlines() if line.strip("-+ \t")]
    return lines[-1] if lines else "task failed"
