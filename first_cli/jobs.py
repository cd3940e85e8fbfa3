"""``first jobs``: HPC functions as jobs from the command line (``POST /v1/jobs``; docs/hpc.md).

The gateway and key come from ``OPENAI_BASE_URL`` and ``OPENAI_API_KEY``, as for ``first batch``::

    first jobs functions                          the functions you may call, with their schemas
    first jobs submit FUNCTION [--input JSON] [--file PATH ...] [--wait]
                                                  files are uploaded first (purpose user_data);
                                                  --wait shows the progress the function reports
    first jobs status ID
    first jobs results ID [-o FILE]               the result (fetched from S3 when large)
    first jobs cancel ID
    first jobs ls [--limit N]
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from first_cli.batch import BatchCliError, client_from_env

if TYPE_CHECKING:
    from openai import OpenAI

FINAL = ("succeeded", "failed", "cancelled")


def _get(client: OpenAI, path: str, **query: Any) -> dict[str, Any]:
    got: Any = client.get(path, cast_to=object, options={"params": query} if query else {})
    return dict(got)


def _post(client: OpenAI, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    got: Any = client.post(path, body=body or {}, cast_to=object)
    return dict(got)


def describe(job: dict[str, Any]) -> str:
    fraction = (job.get("progress") or {}).get("fraction")
    done = f" {fraction:.0%}" if isinstance(fraction, int | float) else ""
    return f"{job['id']}  {job['status']:<9}{done}  {job['function']}"


def submit(
    client: OpenAI, function: str, args: dict[str, Any], files: list[Path]
) -> dict[str, Any]:
    ids = []
    for path in files:
        with path.open("rb") as f:
            ids.append(client.files.create(file=(path.name, f), purpose="user_data").id)
    return _post(client, "/jobs", {"function": function, "input": args, "files": ids})


def wait(client: OpenAI, job: dict[str, Any], poll_s: float = 0.5) -> dict[str, Any]:
    """Poll until the job is final, with a progress bar on stderr (the function's reports)."""
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn

    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=Console(stderr=True), transient=False) as bar:
        task = bar.add_task(job["status"], total=None)
        while job["status"] not in FINAL:
            time.sleep(poll_s)
            job = _get(client, f"/jobs/{job['id']}")
            fraction = (job.get("progress") or {}).get("fraction")
            total = 1.0 if isinstance(fraction, int | float) else None
            bar.update(task, description=job["status"], total=total, completed=fraction or 0)
    return job


def result(client: OpenAI, job_id: str) -> Any:
    """The job's result: inline, or fetched from its presigned URL when large."""
    job = _get(client, f"/jobs/{job_id}")
    if job["status"] != "succeeded":
        error = (job.get("error") or {}).get("message", "")
        raise BatchCliError(f"job {job_id} is {job['status']}{': ' + error if error else ''}")
    if job.get("result_url"):
        import requests

        got = requests.get(job["result_url"], timeout=600)
        got.raise_for_status()
        return got.json()
    return job["result"]


def _input(args: dict[str, object]) -> dict[str, Any]:
    text = args.get("input")
    if not text:
        return {}
    raw = Path(str(text)[1:]).read_text() if str(text).startswith("@") else str(text)
    try:
        value = json.loads(raw)
    except ValueError as exc:
        raise BatchCliError(f"--input is not JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise BatchCliError("--input must be a JSON object")
    return value


def run(action: str, args: dict[str, object]) -> int:
    """``first jobs ACTION``: its exit status."""
    from openai import OpenAIError

    try:
        client = client_from_env()
        if action == "submit":
            files = [Path(str(p)) for p in (args.get("file") or [])]  # type: ignore[attr-defined]
            missing = [str(p) for p in files if not p.is_file()]
            if missing:
                raise BatchCliError(f"no such file: {', '.join(missing)}")
            job = submit(client, str(args["function"]), _input(args), files)
            print(job["id"], flush=True)
            if not args.get("wait"):
                return 0
            job = wait(client, job)
            print(describe(job), file=sys.stderr)
            if job["status"] != "succeeded":
                print(f"  {(job.get('error') or {}).get('message', '')}", file=sys.stderr)
                return 1
            print(json.dumps(result(client, job["id"]), indent=1))
        elif action == "status":
            print(json.dumps(_get(client, f"/jobs/{args['id']}"), indent=1))
        elif action == "results":
            text = json.dumps(result(client, str(args["id"])), indent=1)
            out = args.get("output")
            if out:
                Path(str(out)).write_text(text + "\n")
            else:
                print(text)
        elif action == "cancel":
            print(describe(_post(client, f"/jobs/{args['id']}/cancel")))
        elif action == "ls":
            limit = int(str(args.get("limit") or 20))
            for job in _get(client, "/jobs", limit=min(limit, 100))["data"][:limit]:
                print(describe(job))
        elif action == "functions":
            print(json.dumps(_get(client, "/functions")["data"], indent=1))
        return 0
    except (BatchCliError, OSError) as exc:
        print(f"first: {exc}", file=sys.stderr)
    except OpenAIError as exc:
        print(f"first: {getattr(exc, 'message', None) or exc}", file=sys.stderr)
    return 1
