"""``POST /v1/jobs`` request models: a call of a registered HPC function (``chalicelib/jobs.py``).

The client sends ``{"function", "input", "files"}``; the gateway queues a ``JobBody``, the one
submit path's request (``GatewayRequest``) whose ``model`` is the function's name, and whose
engine body is what the HPC function receives: the input, the files by presigned URL, and the
job's own URLs for progress and cancel (``hpc_functions/jobs.py``).
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field, StringConstraints

from chalicelib.protocol.common import GatewayRequest, OpenAIModel

# File ids per job (the registry's ``max_files`` bounds each function lower).
MAX_JOB_FILES = 16
# A file id as POST /v1/files makes them (``file-`` and a sortable hex id); a key DynamoDB takes.
FileId = Annotated[str, StringConstraints(min_length=1, max_length=128)]


class CreateJobRequest(OpenAIModel):
    function: str = Field(min_length=1, max_length=256)
    input: dict[str, Any] = Field(default_factory=dict)
    files: list[FileId] = Field(default_factory=list, max_length=MAX_JOB_FILES)


class JobBody(GatewayRequest):
    """What a job queues: ``model`` is the function's name (its limits and usage go by it)."""

    input: dict[str, Any]
    files: list[dict[str, Any]] = Field(default_factory=list)
    job: dict[str, Any] = Field(default_factory=dict)

    def engine_body(self) -> dict[str, Any]:
        return {"input": self.input, "files": self.files, "job": self.job}
