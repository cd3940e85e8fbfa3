"""``first batch``: the OpenAI Files and Batches API from the command line, through the OpenAI SDK.

The gateway and key come from ``OPENAI_BASE_URL`` and ``OPENAI_API_KEY`` (``.first/local.env``
sets both for ``make up``), so the same commands work against any deployment:

    first batch submit FILE.jsonl [--endpoint /v1/chat/completions] [--wait]
    first batch status ID
    first batch results ID [-o FILE]      the output lines; the error lines to FILE.errors.jsonl
                                          (stderr without -o)
    first batch cancel ID
    first batch ls [--limit N]

A file larger than ``INLINE_UPLOAD_BYTES`` does not fit the API's payload limit (6 MB through
Lambda): it goes straight to S3 by the gateway's presigned POST (``POST /v1/files/uploads``).
Results are streamed to disk (``with_streaming_response``), never held whole: an output file can
be as large as its 50,000 answers.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:  # the SDK is imported when a command runs, not when `first` parses its args
    from openai import OpenAI
    from openai.types import Batch, FileObject

# The routes a batch may run (the OpenAI SDK and `--endpoint` call it the batch's "endpoint").
ROUTES = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings")
FINAL = ("completed", "failed", "cancelled", "expired")
# Under the API's 6 MB payload limit with room for the multipart envelope.
INLINE_UPLOAD_BYTES = 5 * 1024 * 1024


class BatchCliError(Exception):
    """A problem to tell the user in one line (exit status 1)."""


def client_from_env() -> OpenAI:
    missing = [k for k in ("OPENAI_BASE_URL", "OPENAI_API_KEY") if not os.environ.get(k)]
    if missing:
        raise BatchCliError(
            f"set {' and '.join(missing)} (for make up: set -a; . .first/local.env; set +a)"
        )
    from openai import OpenAI

    return OpenAI()


def describe(batch: Batch) -> str:
    """One line: id, status, lines done of total, endpoint."""
    counts = batch.request_counts
    done = f"{counts.completed + counts.failed}/{counts.total}" if counts else "-"
    failed = f" ({counts.failed} failed)" if counts and counts.failed else ""
    return f"{batch.id}  {batch.status:<11} {done}{failed}  {batch.endpoint}"


def upload(client: OpenAI, path: Path) -> FileObject:
    """``path`` as a batch input file: through the API, or (large) by a presigned POST to S3."""
    import requests

    if path.stat().st_size <= INLINE_UPLOAD_BYTES:
        with path.open("rb") as f:
            return client.files.create(file=(path.name, f), purpose="batch")
    made: Any = client.post(
        "/files/uploads", body={"filename": path.name, "purpose": "batch"}, cast_to=object
    )
    with path.open("rb") as f:
        sent = requests.post(
            made["upload"]["url"],
            data=made["upload"]["fields"],
            files={"file": (path.name, f)},
            timeout=600,
        )
    if sent.status_code >= 300:
        raise BatchCliError(f"S3 refused the upload ({sent.status_code}): {sent.text[:300]}")
    file = client.files.retrieve(made["id"])  # settles it: processed, with its size
    if file.status != "processed":
        raise BatchCliError(f"file {file.id} is {file.status}: {file.status_details}")
    return file


def submit(client: OpenAI, path: Path, endpoint: str) -> Batch:
    file = upload(client, path)
    return client.batches.create(
        input_file_id=file.id,
        endpoint=endpoint,  # type: ignore[arg-type]  # one of ROUTES (argparse choices)
        completion_window="24h",
        metadata={"filename": path.name[:512]},
    )


def wait(client: OpenAI, batch: Batch, poll_s: float = 1.0) -> Batch:
    """Poll until the batch is final, with a progress bar on stderr."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=Console(stderr=True), transient=False) as bar:
        task = bar.add_task(batch.status, total=None)
        while batch.status not in FINAL:
            time.sleep(poll_s)
            batch = client.batches.retrieve(batch.id)
            counts = batch.request_counts
            total = counts.total if counts and counts.total else None
            done = counts.completed + counts.failed if counts else 0
            bar.update(task, description=batch.status, total=total, completed=done)
    return batch


def results(client: OpenAI, batch_id: str, out: Path | None) -> tuple[int, int]:
    """Write the output lines (stdout, or ``out``) and the error lines (stderr, or
    ``out``'s sibling ``NAME.errors.jsonl``); the number of bytes of each."""
    batch = client.batches.retrieve(batch_id)
    if batch.status not in FINAL:
        raise BatchCliError(f"batch {batch_id} is {batch.status}; results come when it is final")
    sizes = []
    for file_id, path, stream in (
        (batch.output_file_id, out, sys.stdout.buffer),
        (batch.error_file_id, errors_path(out) if out else None, sys.stderr.buffer),
    ):
        if not file_id:
            sizes.append(0)
            continue
        if path is None:
            sizes.append(_copy(client, file_id, stream))
        else:
            with path.open("wb") as f:
                sizes.append(_copy(client, file_id, f))
    return sizes[0], sizes[1]


def errors_path(out: Path) -> Path:
    """``out.jsonl`` → ``out.errors.jsonl``."""
    stem = out.name.removesuffix(".jsonl")
    return out.with_name(f"{stem}.errors.jsonl")


def _copy(client: OpenAI, file_id: str, sink: IO[bytes]) -> int:
    size = 0
    with client.files.with_streaming_response.content(file_id) as response:
        for chunk in response.iter_bytes():
            sink.write(chunk)
            size += len(chunk)
    sink.flush()
    return size


def run(action: str, args: dict[str, object]) -> int:
    """``first batch ACTION``: its exit status."""
    from openai import OpenAIError

    try:
        client = client_from_env()
        if action == "submit":
            path = Path(str(args["file"]))
            if not path.is_file():
                raise BatchCliError(f"no such file: {path}")
            batch = submit(client, path, str(args["endpoint"]))
            print(batch.id, flush=True)
            if not args.get("wait"):
                return 0
            batch = wait(client, batch)
            print(describe(batch), file=sys.stderr)
            for error in (batch.errors.data or []) if batch.errors else []:
                print(f"  line {error.line}: {error.message}", file=sys.stderr)
            return 0 if batch.status == "completed" else 1
        if action == "status":
            print(json.dumps(client.batches.retrieve(str(args["id"])).model_dump(), indent=1))
        elif action == "results":
            out = args.get("output")
            output, errors = results(client, str(args["id"]), Path(str(out)) if out else None)
            if out:
                print(f"{output} bytes to {out}, {errors} bytes of errors", file=sys.stderr)
        elif action == "cancel":
            print(describe(client.batches.cancel(str(args["id"]))))
        elif action == "ls":
            limit = int(str(args.get("limit") or 20))
            for batch in client.batches.list(limit=min(limit, 100)).data[:limit]:
                print(describe(batch))
        return 0
    except (BatchCliError, OSError) as exc:
        print(f"first: {exc}", file=sys.stderr)
    except OpenAIError as exc:
        print(f"first: {getattr(exc, 'message', None) or exc}", file=sys.stderr)
    return 1
