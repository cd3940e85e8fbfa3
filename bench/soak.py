"""Soak: a bounded mixed load with faults in the middle; does anything leak, double or vanish?

    python -m bench.soak [--minutes 10] [--concurrency 32] [--users 3]

``--concurrency`` client threads, spread over ``--users`` users (one API key each), send back to
back until the time is up: REST chat, streamed chat over the WebSocket API, embeddings; each user
also submits a batch at the start and one after the faults. Halfway through, ``kill -9`` of the
poller, then (15 s later) of the compute endpoint ``local-a`` (the process and its workers); the
stack's supervisor restarts both. Then every request is accounted for:

- sent, completed, failed (by reason: status and error code);
- lost: accepted (it has a request id) but never completed, after fetching each unanswered one
  by id for up to two minutes; a batch line missing from its output file;
- duplicated: a request the engine ran more than once, other than a re-run because the endpoint
  running it was killed (the ``/stats`` of ``local-a`` is read just before its kill, since its
  counts die with it; those re-runs are counted apart as ``rerun_after_endpoint_kill``), or a
  batch line that appears twice in its output;
- latency p50/p99 per kind; RSS of every process of the stack at start and end.

Starts a stack of its own in a temporary home (never a ``make up`` stack: it kills processes). Prints figures and writes
``bench/results/soak.json``; asserts nothing.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterable
from contextlib import AbstractContextManager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import openai
import requests
from openai import OpenAI
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from bench.common import (
    apply_env,
    children,
    local_stack,
    percentile,
    stack_pids,
    write_result,
)
from chalicelib.settings import REPO_ROOT
from first_cli.client import StreamClient, StreamError

MODEL = "first/tiny-chat"
EMBEDDING_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
KINDS = ("chat", "stream", "embeddings")
CLIENT_TIMEOUT_S = 60.0
# A stream whose done frame has not come by then is counted failed ("no done frame").
STREAM_DONE_S = 120.0
BATCH_LINES = 48
KILLED_ENDPOINT = "compute-local-a"
# Stated bound on memory: a process that ran throughout may end at most this much above its start.
RSS_GROWTH_BOUND = 1.5
RSS_GROWTH_SLACK_MB = 50.0


# -- report arithmetic (pure; tests/unit/test_soak_report.py) -----------------------------------


def merge_runs(snapshots: Iterable[dict[str, int]]) -> dict[str, int]:
    """Engine runs per task summed over endpoint ``/stats`` snapshots (a killed endpoint's last
    snapshot plus what its restarted self and the others counted)."""
    total: dict[str, int] = {}
    for runs in snapshots:
        for task, n in runs.items():
            total[task] = total.get(task, 0) + int(n)
    return total


@dataclass(frozen=True)
class RunAudit:
    ran_once: int
    never_ran: list[str]
    duplicated: list[str]
    rerun_after_endpoint_kill: list[str]


def audit_runs(request_ids: Iterable[str], runs: dict[str, int], killed: set[str]) -> RunAudit:
    """Each request's engine runs: once is right; more is a duplicate unless the request was on
    the killed endpoint (``killed``: task ids in its last snapshot), whose re-run is owed."""
    once, never, dup, rerun = 0, [], [], []
    for rid in request_ids:
        task = f"task-{rid}"
        n = runs.get(task, 0)
        if n == 1:
            once += 1
        elif n == 0:
            never.append(rid)
        elif task in killed:
            rerun.append(rid)
        else:
            dup.append(rid)
    return RunAudit(once, never, dup, rerun)


def batch_audit(expected: Iterable[str], output_ids: list[str]) -> dict[str, int]:
    """Lines of one batch: missing from the output (lost), or in it more than once."""
    want = set(expected)
    seen = Counter(output_ids)
    return {
        "lines": len(want),
        "lost": len(want - set(seen)),
        "duplicated": sum(n - 1 for n in seen.values() if n > 1),
        "unexpected": len(set(seen) - want),
    }


def memory_verdict(name: str, start_mb: float, end_mb: float, restarted: bool) -> str:
    if restarted:
        return "restarted (no bound)"
    if name == "aws":
        # The moto server keeps every record, message and object in memory with no TTL sweep:
        # it grows with the work done, by design of the emulator (on AWS these are services).
        return "emulator: grows with stored state"
    ok = end_mb <= start_mb * RSS_GROWTH_BOUND + RSS_GROWTH_SLACK_MB
    return "within bound" if ok else "GREW PAST BOUND"


def latency_summary(ms: list[float]) -> dict[str, float]:
    return {"n": len(ms), "p50_ms": round(percentile(ms, 50)), "p99_ms": round(percentile(ms, 99))}


# -- the load ------------------------------------------------------------------------------


@dataclass
class Result:
    kind: str
    user: str
    ok: bool
    ms: float
    request_id: str | None = None
    reason: str | None = None


@dataclass
class Run:
    env: dict[str, str]
    keys: dict[str, str]
    deadline: float
    results: list[Result] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, result: Result) -> None:
        with self.lock:
            self.results.append(result)


def create_key(env: dict[str, str], user: str) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "first_cli.main", "keys", "create", "--user", user],
        env={**os.environ, **env},
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.strip()


def reason_of(exc: openai.APIStatusError) -> str:
    try:
        code = exc.response.json()["error"].get("code")
    except (ValueError, KeyError, TypeError):
        code = None
    return f"{exc.status_code} {code}"


def rest_one(client: OpenAI, kind: str, i: int) -> str:
    """One REST request; its request id."""
    if kind == "chat":
        raw: Any = client.chat.completions.with_raw_response.create(
            model=MODEL, messages=[{"role": "user", "content": f"Soak {i}"}], max_tokens=8
        )
    else:
        raw = client.embeddings.with_raw_response.create(
            model=EMBEDDING_MODEL, input=[f"Soak sentence {i}"]
        )
    return str(raw.headers["x-request-id"])


def worker(run: Run, index: int, users: list[str]) -> None:
    user = users[index % len(users)]
    key = run.keys[user]
    client = OpenAI(
        base_url=run.env["OPENAI_BASE_URL"],
        api_key=key,
        max_retries=0,
        timeout=CLIENT_TIMEOUT_S,
    )
    stream: ClientConnection | None = None
    i = 0
    while time.monotonic() < run.deadline:
        kind = KINDS[(index + i) % len(KINDS)]
        i += 1
        start = time.perf_counter()
        result = Result(kind, user, False, 0.0)
        try:
            if kind == "stream":
                if stream is None:
                    stream = ws_connect(run.env["FIRST_WS_URL"], key)
                result.request_id, result.reason = stream_one(stream, f"{index}-{i}")
                result.ok = result.reason is None
            else:
                result.request_id = rest_one(client, kind, i)
                result.ok = True
        except (ConnectionClosed, TimeoutError) as exc:
            result.reason = f"ws {type(exc).__name__}"
            if stream is not None:
                stream.close()
            stream = None
        except openai.APIStatusError as exc:
            result.request_id = exc.response.headers.get("x-request-id")
            result.reason = reason_of(exc)
        except openai.APITimeoutError:
            result.reason = "client timeout"
        except (openai.APIConnectionError, OSError) as exc:
            result.reason = f"connection: {type(exc).__name__}"
        result.ms = (time.perf_counter() - start) * 1000
        run.add(result)
    client.close()
    if stream is not None:
        stream.close()


def ws_connect(url: str, key: str) -> ClientConnection:
    # One connection held across many requests (not a `with` block): the direct form.
    headers = {"Authorization": f"Bearer {key}"}
    conn = connect(url, additional_headers=headers, open_timeout=30, legacy=True)
    assert isinstance(conn, ClientConnection)
    return conn


def stream_one(ws: ClientConnection, ref: str) -> tuple[str | None, str | None]:
    """One streamed chat on the worker's connection: (request id, failure reason or None).

    A done frame that never comes is a failure of its own (``no done frame``), with the request
    id its chunks carried, so the audit can tell whether the request itself completed."""
    body = {"model": MODEL, "messages": [{"role": "user", "content": f"S {ref}"}]}
    ws.send(
        json.dumps({"action": "chat.completions", "id": ref, "body": {**body, "max_tokens": 16}})
    )
    request_id: str | None = None
    deadline = time.monotonic() + STREAM_DONE_S
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return request_id, f"no done frame within {STREAM_DONE_S:.0f} s"
        try:
            frame = json.loads(ws.recv(timeout=left))
        except TimeoutError:
            continue
        if frame.get("id") != ref:
            continue  # a late frame of an earlier request on this connection
        request_id = frame.get("request_id") or request_id
        if frame["type"] == "done":
            return request_id, None
        if frame["type"] == "error":
            return request_id, f"ws {frame.get('status')} {(frame.get('error') or {}).get('code')}"


def batch_lines(prefix: str) -> tuple[bytes, list[str]]:
    ids = [f"{prefix}-{i}" for i in range(BATCH_LINES)]
    rows = [
        {
            "custom_id": cid,
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {
                "model": MODEL,
                "messages": [{"role": "user", "content": cid}],
                "max_tokens": 4,
            },
        }
        for cid in ids
    ]
    return b"".join(json.dumps(r).encode() + b"\n" for r in rows), ids


def submit_batch(env: dict[str, str], key: str, prefix: str) -> tuple[str, list[str]]:
    client = OpenAI(base_url=env["OPENAI_BASE_URL"], api_key=key, max_retries=2)
    data, ids = batch_lines(prefix)
    file = client.files.create(file=(f"{prefix}.jsonl", io.BytesIO(data)), purpose="batch")
    batch = client.batches.create(
        input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    return batch.id, ids


def finish_batch(env: dict[str, str], key: str, batch_id: str, ids: list[str]) -> dict[str, Any]:
    client = OpenAI(base_url=env["OPENAI_BASE_URL"], api_key=key, max_retries=2)
    deadline = time.monotonic() + 600
    batch = client.batches.retrieve(batch_id)
    while batch.status not in ("completed", "failed", "cancelled", "expired"):
        if time.monotonic() > deadline:
            return {"status": f"still {batch.status} after 600 s", **batch_audit(ids, [])}
        time.sleep(2)
        batch = client.batches.retrieve(batch_id)
    out: list[str] = []
    for file_id in (batch.output_file_id, batch.error_file_id):
        if file_id:
            text = client.files.content(file_id).text
            out += [json.loads(line)["custom_id"] for line in text.splitlines() if line.strip()]
    return {"status": batch.status, **batch_audit(ids, out)}


def warm_up(env: dict[str, str], key: str, timeout_s: float = 300) -> None:
    """Until a chat, an embedding and a stream each succeed: the endpoints are online in the
    status table and their engines are loaded in every worker (two of each, one per worker)."""
    client = OpenAI(base_url=env["OPENAI_BASE_URL"], api_key=key, max_retries=0)
    deadline = time.monotonic() + timeout_s
    done = 0
    while done < 4:
        try:
            rest_one(client, "chat", done)
            rest_one(client, "embeddings", done)
            with StreamClient(env["FIRST_WS_URL"], key) as ws:
                body = {"model": MODEL, "messages": [{"role": "user", "content": "warm"}]}
                frames = list(ws.frames("chat.completions", {**body, "max_tokens": 2}))
            if frames[-1]["type"] != "done":
                raise RuntimeError(json.dumps(frames[-1]))
            done += 1
        except (openai.OpenAIError, RuntimeError, StreamError) as exc:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the stack did not warm up: {exc}") from exc
            time.sleep(2)


def rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def memory(env: dict[str, str]) -> dict[str, tuple[int, float]]:
    out = {}
    for name, pid in stack_pids(env).items():
        mb = rss_mb(pid)
        if mb is not None:
            out[name] = (pid, mb)
    return out


def endpoint_runs(env: dict[str, str], only: str | None = None) -> dict[str, dict[str, int]]:
    state = json.loads((Path(env["FIRST_HOME"]) / "stack.json").read_text())
    auth = {"Authorization": f"Bearer {state['endpoint_token']}"}
    out = {}
    for name, url in state["compute_urls"].items():
        if only is None or f"compute-{name}" == only:
            stats = requests.get(f"{url}/stats", headers=auth, timeout=10).json()
            out[name] = {k: int(v) for k, v in stats["runs"].items()}
    return out


def wait_restarted(env: dict[str, str], name: str, old_pid: int, timeout_s: float = 300) -> float:
    """Seconds until the supervisor has ``name`` running again under a new pid."""
    start = time.monotonic()
    while time.monotonic() - start < timeout_s:
        pid = stack_pids(env).get(name)
        if pid and pid != old_pid:
            return time.monotonic() - start
        time.sleep(0.5)
    return float("nan")


def faults(env: dict[str, str], at: float, log: dict[str, Any]) -> None:
    """kill -9 of the poller, then of one compute endpoint (with its workers)."""
    time.sleep(max(0.0, at - time.monotonic()))
    pids = stack_pids(env)
    poller = pids["poller-0"]
    os.kill(poller, signal.SIGKILL)
    log["poller_killed_at_s"] = round(time.monotonic() - log["t0"], 1)
    log["poller_back_after_s"] = round(wait_restarted(env, "poller-0", poller), 1)
    time.sleep(15)
    endpoint = stack_pids(env)[KILLED_ENDPOINT]
    workers = children(endpoint)
    # Its counts die with it: read them as close to the kill as possible.
    log["killed_endpoint_runs"] = endpoint_runs(env, KILLED_ENDPOINT)
    os.kill(endpoint, signal.SIGKILL)
    for w in workers:
        with suppress(ProcessLookupError):
            os.kill(w, signal.SIGKILL)
    log["endpoint_killed_at_s"] = round(time.monotonic() - log["t0"], 1)
    log["endpoint_back_after_s"] = round(wait_restarted(env, KILLED_ENDPOINT, endpoint), 1)


def settle(env: dict[str, str], keys: dict[str, str], pending: dict[str, str]) -> set[str]:
    """Unanswered requests (id → user) fetched by id until completed; the ones never done."""
    left = dict(pending)
    deadline = time.monotonic() + 120
    while left and time.monotonic() < deadline:
        for rid, user in list(left.items()):
            url = f"{env['OPENAI_BASE_URL']}/requests/{rid}"
            headers = {"Authorization": f"Bearer {keys[user]}"}
            status = requests.get(url, headers=headers, timeout=10).json().get("status")
            if status in ("completed", "failed"):
                left.pop(rid)
        time.sleep(1.0)
    return set(left)


def soak(env: dict[str, str], minutes: float, concurrency: int, users: int) -> dict[str, Any]:
    names = [f"soak-{i}" for i in range(users)]
    keys = {u: create_key(env, u) for u in names}
    warm_up(env, keys[names[0]])
    # After the warm-up: every engine loaded, so growth from here is the run's own.
    mem_start = memory(env)
    runs_at_start = endpoint_runs(env)
    t0 = time.monotonic()
    run = Run(env, keys, t0 + minutes * 60)
    fault_log: dict[str, Any] = {"t0": t0}
    batches = [(u, *submit_batch(env, keys[u], f"{u}-a")) for u in names]
    threads = [
        threading.Thread(target=worker, args=(run, i, names), daemon=True)
        for i in range(concurrency)
    ]
    threads.append(threading.Thread(target=faults, args=(env, t0 + minutes * 30, fault_log)))
    for t in threads:
        t.start()
    # The second round of batches goes in once the faults are over.
    threads[-1].join()
    batches += [(u, *submit_batch(env, keys[u], f"{u}-b")) for u in names]
    for t in threads[:-1]:
        t.join()
    load_s = time.monotonic() - t0
    batch_reports = {bid: finish_batch(env, keys[u], bid, ids) for u, bid, ids in batches}
    results = run.results
    # Accepted (it has an id) but not answered: fetched by id until it completes or fails.
    unanswered = {r.request_id: r.user for r in results if r.request_id and not r.ok}
    never = settle(env, keys, unanswered)
    final_runs = endpoint_runs(env)
    killed_name = KILLED_ENDPOINT.removeprefix("compute-")
    killed_snapshot = fault_log.pop("killed_endpoint_runs", {}).get(killed_name, {})
    baseline = merge_runs(runs_at_start.values())
    runs = merge_runs([killed_snapshot, *final_runs.values()])
    runs = {k: v - baseline.get(k, 0) for k, v in runs.items()}
    ids = [r.request_id for r in results if r.request_id and (r.ok or r.request_id in unanswered)]
    audit = audit_runs(ids, runs, set(killed_snapshot))
    mem_end = memory(env)
    failures = Counter(f"{r.kind}: {r.reason or 'unknown'}" for r in results if not r.ok)
    memory_rows = {}
    for name, (pid, start_mb) in sorted(mem_start.items()):
        end = mem_end.get(name)
        restarted = end is None or end[0] != pid
        end_mb = end[1] if end else float("nan")
        memory_rows[name] = {
            "start_mb": round(start_mb, 1),
            "end_mb": round(end_mb, 1),
            "verdict": memory_verdict(name, start_mb, end_mb, restarted),
        }
    fault_log.pop("t0")
    return {
        "minutes": minutes,
        "load_s": round(load_s, 1),
        "concurrency": concurrency,
        "users": users,
        "sent": len(results),
        "completed": sum(r.ok for r in results),
        "failed": dict(failures),
        "lost": len(never),
        "lost_ids": sorted(never)[:20],
        "duplicated": len(audit.duplicated),
        "duplicated_ids": audit.duplicated[:20],
        "rerun_after_endpoint_kill": len(audit.rerun_after_endpoint_kill),
        "accepted_never_ran": len(audit.never_ran),
        # Streams whose request completed but whose done frame never reached the client.
        "stream_done_frame_missing": [
            r.request_id
            for r in results
            if r.reason and r.reason.startswith("no done frame") and r.request_id not in never
        ],
        "latency": {
            k: latency_summary([r.ms for r in results if r.kind == k and r.ok]) for k in KINDS
        },
        "per_kind": {
            k: {
                "sent": sum(r.kind == k for r in results),
                "ok": sum(r.ok for r in results if r.kind == k),
            }
            for k in KINDS
        },
        "batches": batch_reports,
        "faults": fault_log,
        "memory": memory_rows,
        "cores": os.cpu_count(),
        "load_average": os.getloadavg(),
    }


def print_report(r: dict[str, Any]) -> None:
    print(f"soak: {r['minutes']} min, {r['concurrency']} concurrent, {r['users']} users")
    print(f"sent {r['sent']}, completed {r['completed']}, failed {sum(r['failed'].values())}")
    for reason, n in sorted(r["failed"].items(), key=lambda kv: -kv[1]):
        print(f"  failed: {n} x {reason}")
    print(f"lost {r['lost']}, duplicated {r['duplicated']}, ", end="")
    print(f"re-run after the endpoint kill {r['rerun_after_endpoint_kill']}")
    print(f"streams completed without their done frame: {r['stream_done_frame_missing']}")
    print("| kind | sent | ok | p50 ms | p99 ms |")
    print("|---|---|---|---|---|")
    for k, lat in r["latency"].items():
        pk = r["per_kind"][k]
        print(f"| {k} | {pk['sent']} | {pk['ok']} | {lat['p50_ms']} | {lat['p99_ms']} |")
    for bid, b in r["batches"].items():
        print(f"batch {bid}: {b}")
    print(f"faults: {r['faults']}")
    print("| process | RSS start MB | RSS end MB | verdict |")
    print("|---|---|---|---|")
    for name, m in r["memory"].items():
        print(f"| {name} | {m['start_mb']} | {m['end_mb']} | {m['verdict']} |")
    print(f"load average at the end: {r['load_average']} on {r['cores']} cores")


def own_stack() -> AbstractContextManager[dict[str, str]]:
    """A stack of its own (never a `make up` stack someone is using: this one gets kill -9)."""
    return local_stack(Path(tempfile.mkdtemp(prefix="first-soak-")), own=True)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--users", type=int, default=3)
    args = p.parse_args(argv)
    with own_stack() as env:
        apply_env(env)
        report = soak(env, args.minutes, args.concurrency, args.users)
    print_report(report)
    command = (
        f"python -m bench.soak --minutes {args.minutes:g} --concurrency {args.concurrency}"
        f" --users {args.users}"
    )
    write_result("soak", command, report)


if __name__ == "__main__":
    main()
