"""``first jobs`` against the running stack: functions, submit (a file, --wait with its progress
bar), status, results, ls and cancel."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from pathlib import Path

from offline.background import BackgroundStack
from tests.unit.test_jobs import CENTRES, blobs_image, png_base64


def first(stack: BackgroundStack, *args: str) -> subprocess.CompletedProcess[str]:
    """The CLI with the stack's environment (local.env: OPENAI_BASE_URL, OPENAI_API_KEY)."""
    return subprocess.run(
        [sys.executable, "-m", "first_cli.main", "jobs", *args],
        env={**stack.config.env(), **stack.env()},
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


def test_submit_a_file_wait_status_results_and_ls(stack: BackgroundStack, tmp_path: Path) -> None:
    listed = first(stack, "functions")
    assert listed.returncode == 0, listed.stderr
    assert "first/count-objects" in {f["id"] for f in json.loads(listed.stdout)}
    image = tmp_path / "cells.png"
    image.write_bytes(base64.b64decode(png_base64(blobs_image(CENTRES))))
    submitted = first(stack, "submit", "first/count-objects", "--file", str(image), "--wait")
    assert submitted.returncode == 0, submitted.stderr
    job_id, _, rest = submitted.stdout.partition("\n")
    assert job_id.startswith("req_")
    assert json.loads(rest)["count"] == len(CENTRES)  # --wait prints the result
    assert "succeeded" in submitted.stderr  # the bar's last line and the summary
    status = json.loads(first(stack, "status", job_id).stdout)
    assert status["status"] == "succeeded" and status["progress"]["fraction"] == 1.0
    out = tmp_path / "result.json"
    assert first(stack, "results", job_id, "-o", str(out)).returncode == 0
    assert json.loads(out.read_text())["count"] == len(CENTRES)
    assert job_id in first(stack, "ls").stdout


def test_a_bad_input_and_a_cancel_from_the_cli(stack: BackgroundStack) -> None:
    bad = first(stack, "submit", "first/count-objects", "--input", '{"threshold": "x"}')
    assert bad.returncode == 1 and "input.threshold" in bad.stderr
    long = first(stack, "submit", "first/sleep-steps", "--input", '{"steps": 600, "step_s": 0.1}')
    job_id = long.stdout.strip()
    cancelled = first(stack, "cancel", job_id)
    assert cancelled.returncode == 0 and "cancelled" in cancelled.stdout
    results = first(stack, "results", job_id)
    assert results.returncode == 1 and "cancelled" in results.stderr
