"""The latency a job adds over its function's own time (HPC functions as jobs, docs/hpc.md).

    python -m bench.jobs [--jobs 20] [--step-s 0 0.5] [--poll-ms 10]

Against the running stack (``make up``), or one of its own. Submits ``first/sleep-steps`` jobs
one at a time (one step of ``step_s``) and polls ``GET /v1/jobs/{id}`` every ``poll_ms`` until
it succeeds; the added latency is the time from the ``POST`` to the first ``succeeded`` answer
less the function's own time (``usage.compute_time_ms``: from the function's start to its end on
the node). It includes the queue, the claim, the task's trip to the endpoint and back, the
result's store, and up to one poll interval. And one ``first/count-objects`` on a 512x512 image
of 50 blobs, for a real function's figures. Prints figures, asserts nothing; writes
``bench/results/jobs.json``, from which ``python -m bench.report`` writes the table in
docs/performance.md.
"""

from __future__ import annotations

import argparse
import base64
import io
import statistics
import sys
import time
from typing import Any

import numpy as np
import requests

from bench.common import local_stack, percentile, write_result


def blobs_png(count: int, size: int = 512, radius: int = 8) -> str:
    rng = np.random.default_rng(1)
    image = rng.normal(30, 5, (size, size))
    yy, xx = np.mgrid[:size, :size]
    side = int(np.ceil(np.sqrt(count)))
    step = size // side
    for i in range(count):
        x, y = (i % side) * step + step // 2, (i // side) * step + step // 2
        image[(xx - x) ** 2 + (yy - y) ** 2 <= radius**2] = 200
    from PIL import Image

    out = io.BytesIO()
    Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(out, format="PNG")
    return base64.b64encode(out.getvalue()).decode()


def run_one(
    session: requests.Session, api: str, function: str, args: dict[str, Any], poll_s: float
) -> dict[str, Any]:
    started = time.perf_counter()
    created = session.post(f"{api}/jobs", json={"function": function, "input": args}, timeout=30)
    created.raise_for_status()
    job = created.json()
    submit_ms = (time.perf_counter() - started) * 1000
    while job["status"] not in ("succeeded", "failed", "cancelled"):
        time.sleep(poll_s)
        job = session.get(f"{api}/jobs/{job['id']}", timeout=30).json()
    total_ms = (time.perf_counter() - started) * 1000
    if job["status"] != "succeeded":
        raise RuntimeError(f"job {job['id']} {job['status']}: {job.get('error')}")
    function_ms = float(job["usage"]["compute_time_ms"])
    return {"total_ms": total_ms, "function_ms": function_ms, "submit_ms": submit_ms, "job": job}


def summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    added = [r["total_ms"] - r["function_ms"] for r in runs]
    return {
        "jobs": len(runs),
        "function_ms_p50": round(statistics.median(r["function_ms"] for r in runs), 1),
        "total_ms_p50": round(statistics.median(r["total_ms"] for r in runs), 1),
        "added_ms_p50": round(percentile(added, 50), 1),
        "added_ms_p90": round(percentile(added, 90), 1),
        "submit_ms_p50": round(statistics.median(r["submit_ms"] for r in runs), 1),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--jobs", type=int, default=20)
    p.add_argument("--step-s", type=float, nargs="+", default=[0.0, 0.5])
    p.add_argument("--poll-ms", type=float, default=10.0)
    p.add_argument("--no-save", action="store_true")
    args = p.parse_args(argv)
    poll_s = args.poll_ms / 1000
    with local_stack() as env:
        api = env["OPENAI_BASE_URL"].rstrip("/")
        session = requests.Session()
        session.headers["Authorization"] = f"Bearer {env['OPENAI_API_KEY']}"
        cases = []
        run_one(session, api, "first/sleep-steps", {"steps": 1, "step_s": 0}, poll_s)  # warm
        for step_s in args.step_s:
            sleep_args = {"steps": 1, "step_s": step_s}
            runs = [
                run_one(session, api, "first/sleep-steps", sleep_args, poll_s)
                for _ in range(args.jobs)
            ]
            cases.append({"case": f"sleep-steps, 1 step of {step_s:g} s", **summary(runs)})
            print(cases[-1], flush=True)
        image = {"image_base64": blobs_png(50), "min_area": 10}
        runs = [run_one(session, api, "first/count-objects", image, poll_s) for _ in range(5)]
        assert all(r["job"]["result"]["count"] == 50 for r in runs), "count-objects miscounted"
        cases.append({"case": "count-objects, 512x512, 50 blobs", **summary(runs)})
        print(cases[-1], flush=True)
    if not args.no_save:
        given = sys.argv[1:] if argv is None else argv
        command = " ".join(["python -m bench.jobs", *given])
        path = write_result("jobs", command, {"poll_ms": args.poll_ms, "cases": cases})
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
