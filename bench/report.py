"""The benchmark tables of README.md and docs/performance.md, written from the result files.

    python -m bench.report            # rewrite every table from bench/results/*.json
    python -m bench.report --check    # exit 1 if a committed table differs from its file

Each table sits between ``<!-- bench:NAME -->`` and ``<!-- /bench:NAME -->`` and is rendered from
one result file (``bench/results/<file>.json``), which names the date, the commit and the machine
measured. ``make bench`` runs the benchmarks and then this; ``tests/unit/test_bench_tables.py``
fails when a table and its file disagree, so no figure is ever edited by hand.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from chalicelib.settings import REPO_ROOT

RESULTS = REPO_ROOT / "bench" / "results"
README = REPO_ROOT / "README.md"
PERFORMANCE = REPO_ROOT / "docs" / "performance.md"

# Issue 17's goals for the interactive path on the local stack.
GOAL_CALLS_AT_1 = 6.0
GOAL_CALLS_AT_32 = 4.0
GOAL_RPS_AT_32 = 40.0
GOAL_CPU_MS = 3.0
GOAL_LOAD_SHARE = 0.80
# Issue 19's goal for constrained decoding: the grammar's share of decode time.
GOAL_GRAMMAR_SHARE_PCT = 10.0


def load(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((RESULTS / f"{name}.json").read_text())
    return data


def measured(data: dict[str, Any]) -> str:
    m = data["measured"]
    load_avg = ", ".join(f"{x:.1f}" for x in m["load_average"])
    return (
        f"Measured {m['date']} at commit {m['commit']} ({m['cores']} cores, load average"
        f" {load_avg} at the end): `{data['command']}`."
    )


def ms(value: float) -> str:
    return f"{value:,.1f} ms" if value < 100 else f"{value:,.0f} ms"


def met(ok: bool) -> str:
    return "met" if ok else "**not met**"


def phases(data: dict[str, Any]) -> dict[int, dict[str, Any]]:
    return {int(p["concurrency"]): p for p in data["phases"]}


def cpu(phase: dict[str, Any], name: str) -> float:
    return float(phase["cpu_ms_per_request"].get(name, 0.0))


def interactive_readme(data: dict[str, Any]) -> str:
    rows = [
        "| concurrency | req/s | added latency p50 | p99 | AWS calls / req"
        " | CPU ms / req: API, poller | lost | engine runs ≠ 1 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for c, p in sorted(phases(data).items()):
        rows.append(
            f"| {c} | {p['requests_per_s']} | {ms(p['added_ms_p50'])} | {ms(p['added_ms_p99'])}"
            f" | {p['aws_calls_per_request']} | {cpu(p, 'api'):.1f}, {cpu(p, 'poller-0'):.1f}"
            f" | {p['lost']} | {p['engine_runs_not_once']} |"
        )
    return "\n".join([*rows, "", measured(data)])


def interactive_doc(data: dict[str, Any]) -> str:
    by_c = phases(data)
    rows = [
        "| concurrency | max_tokens | req/s | added p50 | added p99 | engine p50"
        " | AWS calls / req | AWS bytes / req | lost | engine runs ≠ 1 |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c, p in sorted(by_c.items()):
        rows.append(
            f"| {c} | {p['max_tokens']} | {p['requests_per_s']} | {ms(p['added_ms_p50'])}"
            f" | {ms(p['added_ms_p99'])} | {ms(p['engine_ms_p50'])}"
            f" | {p['aws_calls_per_request']} | {p['aws_bytes_per_request']:,} | {p['lost']}"
            f" | {p['engine_runs_not_once']} |"
        )
    processes = [
        ("API", "api"),
        ("poller", "poller-0"),
        ("local AWS (moto)", "aws"),
        ("compute endpoints", "compute endpoints"),
        ("engine workers", "engine workers"),
    ]
    rows += [
        "",
        "| CPU ms per request | " + " | ".join(label for label, _ in processes) + " |",
        "|---|" + "---|" * len(processes),
    ]
    for c, p in sorted(by_c.items()):
        rows.append(
            f"| concurrency {c} | " + " | ".join(f"{cpu(p, k):.1f}" for _, k in processes) + " |"
        )
    operations = sorted({op for p in by_c.values() for op in p["aws_calls_by_operation"]})
    rows += [
        "",
        "| AWS calls per request | " + " | ".join(f"concurrency {c}" for c in sorted(by_c)) + " |",
        "|---|" + "---|" * len(by_c),
    ]
    for op in operations:
        values = [by_c[c]["aws_calls_by_operation"].get(op, 0) for c in sorted(by_c)]
        rows.append(f"| `{op}` | " + " | ".join(f"{v:g}" for v in values) + " |")
    rows += ["", measured(data), "", *goals(by_c)]
    return "\n".join(rows)


def goals(by_c: dict[int, dict[str, Any]]) -> list[str]:
    """Issue 17's goals against these figures (lines of a list)."""
    out = []
    one, busy = by_c.get(1), by_c.get(32)
    if one is not None:
        calls = one["aws_calls_per_request"]
        out.append(
            f"- AWS calls per request at concurrency 1: {calls} (goal ≤ {GOAL_CALLS_AT_1:g}:"
            f" {met(calls <= GOAL_CALLS_AT_1)})"
        )
    if busy is not None:
        calls, rps = busy["aws_calls_per_request"], busy["requests_per_s"]
        out.append(
            f"- AWS calls per request at concurrency 32: {calls} (goal ≤ {GOAL_CALLS_AT_32:g}:"
            f" {met(calls <= GOAL_CALLS_AT_32)})"
        )
        out.append(
            f"- requests/s at concurrency 32: {rps} (goal ≥ {GOAL_RPS_AT_32:g}:"
            f" {met(rps >= GOAL_RPS_AT_32)})"
        )
        api, poller = cpu(busy, "api"), cpu(busy, "poller-0")
        out.append(
            f"- CPU per request at concurrency 32: API {api:.1f} ms, poller {poller:.1f} ms"
            f" (goal ≤ {GOAL_CPU_MS:g} ms each: {met(max(api, poller) <= GOAL_CPU_MS)})"
        )
    return out


def load_doc(data: dict[str, Any]) -> str:
    rows = [
        "| clients | requests | completed/s | p50 | p99 | max | answers | lost"
        " | engine runs ≠ 1 | AWS calls / req | CPU ms / req: API, poller |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    levels = {int(r["clients"]): r for r in data["levels"]}
    for c, r in sorted(levels.items()):
        answers = ", ".join(f"{k} × {v}" for k, v in sorted(r["statuses"].items()))
        calls = sum(r["aws_calls_per_request"].values())
        rows.append(
            f"| {c} | {r['requests']} | {r['completed_per_s']} | {ms(r['ms_p50'])}"
            f" | {ms(r['ms_p99'])} | {ms(r['ms_max'])} | {answers} | {r['504_never_completed']}"
            f" | {r['engine_runs_not_once']} | {calls:.2f}"
            f" | {cpu(r, 'api'):.1f}, {cpu(r, 'poller-0'):.1f} |"
        )
    rows += ["", measured(data)]
    if 32 in levels and 256 in levels:
        low, high = levels[32], levels[256]
        share = high["completed_per_s"] / low["completed_per_s"] if low["completed_per_s"] else 0
        errors = sum(v for k, v in high["statuses"].items() if k != "200")
        rows += [
            "",
            f"- 256 clients: {share:.0%} of the 32-client throughput (goal ≥"
            f" {GOAL_LOAD_SHARE:.0%}: {met(share >= GOAL_LOAD_SHARE)}), {errors} answers other"
            f" than 200, slowest {ms(high['ms_max'])}",
        ]
    return "\n".join(rows)


def soak_doc(data: dict[str, Any]) -> str:
    failed = sum(data["failed"].values())
    reasons = "; ".join(f"{n} × {k}" for k, n in sorted(data["failed"].items())) or "none"
    rows = [
        "| | |",
        "|---|---|",
        f"| sent / completed / failed | {data['sent']:,} / {data['completed']:,} / {failed}"
        f" ({reasons}) |",
        f"| lost | {data['lost']} |",
        f"| duplicated | {data['duplicated']} (re-runs owed to the endpoint kill:"
        f" {data['rerun_after_endpoint_kill']}) |",
        f"| streams without their `done` frame | {len(data['stream_done_frame_missing'])} |",
        f"| batches | {len(data['batches'])}, "
        + ", ".join(sorted({str(b.get("status")) for b in data["batches"].values()}))
        + " |",
        "",
        "| kind | sent | ok | p50 | p99 |",
        "|---|---:|---:|---:|---:|",
    ]
    for kind, lat in data["latency"].items():
        pk = data["per_kind"][kind]
        rows.append(
            f"| {kind} | {pk['sent']:,} | {pk['ok']:,} | {ms(lat['p50_ms'])} | {ms(lat['p99_ms'])} |"
        )
    rows += ["", "| process | RSS start (MB) | end (MB) | verdict |", "|---|---:|---:|---|"]
    for name, m in data["memory"].items():
        rows.append(f"| {name} | {m['start_mb']} | {m['end_mb']} | {m['verdict']} |")
    rows += ["", measured(data)]
    return "\n".join(rows)


def constrained_doc(data: dict[str, Any]) -> str:
    rows = [
        "| case | tokens | tokens/s | ms / token | grammar µs / token | grammar share"
        " | setup | finish |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for c in data["cases"]:
        finishes = ", ".join(f"{k} × {v}" for k, v in sorted(c["finishes"].items()))
        rows.append(
            f"| {c['case']} | {c['tokens']:,} | {c['tokens_per_s']} | {c['ms_per_token']}"
            f" | {c['grammar_us_per_token']:,} | {c['grammar_share_pct']} %"
            f" | {ms(c['setup_ms'])} | {finishes} |"
        )
    worst = max((c["grammar_share_pct"] for c in data["cases"]), default=0.0)
    rows += [
        "",
        f"- the grammar's largest share of decode time: {worst} % (goal ≤"
        f" {GOAL_GRAMMAR_SHARE_PCT:g} %: {met(worst <= GOAL_GRAMMAR_SHARE_PCT)})",
        "",
        measured(data),
    ]
    return "\n".join(rows)


def jobs_doc(data: dict[str, Any]) -> str:
    rows = [
        "| job | jobs | function p50 | POST → succeeded p50 | added p50 | added p90 | POST p50 |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for c in data["cases"]:
        rows.append(
            f"| {c['case']} | {c['jobs']} | {ms(c['function_ms_p50'])} | {ms(c['total_ms_p50'])}"
            f" | {ms(c['added_ms_p50'])} | {ms(c['added_ms_p90'])} | {ms(c['submit_ms_p50'])} |"
        )
    rows += [
        "",
        f"Added: from the `POST` to the first `succeeded` answer, less the function's own time"
        f" (`usage.compute_time_ms`); it includes up to one poll interval ({data['poll_ms']:g} ms).",
        "",
        measured(data),
    ]
    return "\n".join(rows)


def affinity_doc(data: dict[str, Any]) -> str:
    rows = [
        f"{data['conversations']} conversations × {data['turns']} turns,"
        f" {data['concurrency']} at a time, on the two local endpoints:",
        "",
        "| affinity | requests | follow-ups at home | TTFT p50 | TTFT p90 | prompt tokens"
        " | cached | prefill computed |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for m in data["modes"]:
        rows.append(
            f"| {m['affinity']} | {m['requests']} | {m['hit_rate_pct']} % | {ms(m['ttft_p50_ms'])}"
            f" | {ms(m['ttft_p90_ms'])} | {m['prompt_tokens']:,} | {m['cached_tokens']:,}"
            f" | {m['prefill_tokens']:,} |"
        )
    rows += ["", measured(data)]
    return "\n".join(rows)


def dialects_doc(data: dict[str, Any]) -> str:
    rows = [
        f"The same prompt ({data['max_tokens']} token(s), `{data['model']}`), each kind in turn,"
        f" {data['cases'][0]['calls']} rounds:",
        "",
        "| call | calls | p50 | p90 | added over chat p50 | added p90 |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for c in data["cases"]:
        base = c["kind"] == "chat"  # the baseline: nothing added to itself
        added = "– | –" if base else f"{ms(c['added_ms_p50'])} | {ms(c['added_ms_p90'])}"
        rows.append(
            f"| {c['kind']} | {c['calls']} | {ms(c['p50_ms'])} | {ms(c['p90_ms'])} | {added} |"
        )
    rows += [
        "",
        "Added: per round, the call's time less the chat call's in the same round (a negative"
        " figure is within the noise).",
        "",
        measured(data),
    ]
    return "\n".join(rows)


# Each table: (file it goes in, the result file it is rendered from, the renderer).
TABLES: dict[str, tuple[Path, str, Callable[[dict[str, Any]], str]]] = {
    "interactive-readme": (README, "interactive", interactive_readme),
    "interactive": (PERFORMANCE, "interactive", interactive_doc),
    "load": (PERFORMANCE, "load", load_doc),
    "soak": (PERFORMANCE, "soak", soak_doc),
    "constrained": (PERFORMANCE, "constrained", constrained_doc),
    "jobs": (PERFORMANCE, "jobs", jobs_doc),
    "affinity": (PERFORMANCE, "affinity", affinity_doc),
    "dialects": (PERFORMANCE, "dialects", dialects_doc),
}


def _pattern(name: str) -> re.Pattern[str]:
    return re.compile(
        rf"(<!-- bench:{re.escape(name)} [^>]*-->\n)(.*?)(\n<!-- /bench:{re.escape(name)} -->)",
        re.DOTALL,
    )


def committed(name: str) -> str:
    """The table as the document holds it now."""
    path = TABLES[name][0]
    found = _pattern(name).search(path.read_text())
    if found is None:
        raise LookupError(f"{path.name} has no <!-- bench:{name} --> block")
    return found.group(2)


def rendered(name: str) -> str:
    _, result, render = TABLES[name]
    return render(load(result))


def _replace(table: str, found: re.Match[str]) -> str:
    return found.group(1) + table + found.group(3)


def rewrite(names: list[str] | None = None) -> list[str]:
    """Rewrite the tables whose result file exists; the names rewritten."""
    done = []
    for name in names or list(TABLES):
        path, result, _ = TABLES[name]
        if not (RESULTS / f"{result}.json").exists():
            continue
        text = path.read_text()
        table = rendered(name)
        new, n = _pattern(name).subn(partial(_replace, table), text)
        if n != 1:
            raise LookupError(f"{path.name} has no <!-- bench:{name} --> block")
        path.write_text(new)
        done.append(name)
    return done


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--check", action="store_true", help="fail if a table differs from its file")
    args = p.parse_args(argv)
    if args.check:
        stale = [n for n in TABLES if committed(n) != rendered(n)]
        if stale:
            print(f"stale tables (run python -m bench.report): {', '.join(stale)}")
            sys.exit(1)
        return
    for name in rewrite():
        print(f"rewrote the {name} table in {TABLES[name][0].relative_to(REPO_ROOT)}")


if __name__ == "__main__":
    main()
