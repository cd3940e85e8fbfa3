"""``first batch`` against the running stack: submit (and wait), status, results, cancel, ls."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from offline.background import BackgroundStack
from tests.e2e.conftest import BROKEN_MODEL
from tests.e2e.test_batch import jsonl


def first(stack: BackgroundStack, *args: str) -> subprocess.CompletedProcess[str]:
    """The CLI with the stack's environment (local.env: OPENAI_BASE_URL, OPENAI_API_KEY)."""
    return subprocess.run(
        [sys.executable, "-m", "first_cli.main", "batch", *args],
        env={**stack.config.env(), **stack.env()},
        capture_output=True,
        text=True,
        timeout=180,
    )


def test_submit_wait_status_results_and_ls(stack: BackgroundStack, tmp_path: Path) -> None:
    source = tmp_path / "questions.jsonl"
    source.write_bytes(jsonl(6, prefix="cli"))
    submitted = first(stack, "submit", str(source), "--wait")
    assert submitted.returncode == 0, submitted.stderr
    batch_id = submitted.stdout.strip()
    assert batch_id.startswith("batch_")
    assert "completed" in submitted.stderr and "6/6" in submitted.stderr

    status = json.loads(first(stack, "status", batch_id).stdout)
    assert status["status"] == "completed"
    assert status["request_counts"] == {"total": 6, "completed": 6, "failed": 0}
    assert status["metadata"] == {"filename": "questions.jsonl"}

    out = tmp_path / "answers.jsonl"
    got = first(stack, "results", batch_id, "-o", str(out))
    assert got.returncode == 0, got.stderr
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert [x["custom_id"] for x in lines] == [f"cli-{i}" for i in range(6)]
    assert all(x["response"]["status_code"] == 200 for x in lines)
    assert not (tmp_path / "answers.errors.jsonl").exists()

    to_stdout = first(stack, "results", batch_id)
    assert to_stdout.stdout == out.read_text()

    listed = first(stack, "ls").stdout.splitlines()
    assert any(row.startswith(batch_id) and "completed" in row for row in listed)


def test_failed_lines_go_to_the_errors_file(stack: BackgroundStack, tmp_path: Path) -> None:
    # The broken model passes validation (it is registered) but cannot load: every try of its
    # shard fails, and its lines go to the error file.
    rows = [json.loads(x) for x in jsonl(2, prefix="bad").splitlines()]
    for row in rows:
        row["body"]["model"] = BROKEN_MODEL
    source = tmp_path / "broken.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in rows))
    submitted = first(stack, "submit", str(source), "--wait")
    batch_id = submitted.stdout.strip()
    assert "2/2 (2 failed)" in submitted.stderr

    out = tmp_path / "broken-out.jsonl"
    assert first(stack, "results", batch_id, "-o", str(out)).returncode == 0
    errors = [
        json.loads(x) for x in (tmp_path / "broken-out.errors.jsonl").read_text().splitlines()
    ]
    assert sorted(e["custom_id"] for e in errors) == ["bad-0", "bad-1"]
    # The engine's refusal (a 5xx response), or the shard's error when no try could run it.
    assert all(e["error"] or e["response"]["status_code"] >= 500 for e in errors)


def test_cancel_and_the_errors_a_user_sees(stack: BackgroundStack, tmp_path: Path) -> None:
    # Long enough (ten shards run one at a time) to still be running when the cancel lands.
    source = tmp_path / "long.jsonl"
    source.write_bytes(jsonl(600, max_tokens=8, prefix="long"))
    batch_id = first(stack, "submit", str(source)).stdout.strip()
    cancelled = first(stack, "cancel", batch_id)
    assert cancelled.returncode == 0, cancelled.stderr
    assert cancelled.stdout.startswith(batch_id) and "cancel" in cancelled.stdout

    missing = first(stack, "status", "batch_nope")
    assert missing.returncode == 1 and missing.stderr.startswith("first: ")
    assert first(stack, "submit", str(tmp_path / "absent.jsonl")).returncode == 1
    no_env = subprocess.run(
        [sys.executable, "-m", "first_cli.main", "batch", "ls"],
        env={k: v for k, v in stack.config.env().items() if not k.startswith("OPENAI_")},
        capture_output=True,
        text=True,
    )
    assert no_env.returncode == 1 and "OPENAI_BASE_URL" in no_env.stderr
