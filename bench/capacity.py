"""Capacity model of one FIRST stage: what binds first, how many pollers, and the AWS cost.

    python -m bench.capacity                      the table for docs/scaling.md
    python -m bench.capacity --engine-s 2 5 20    other engine times

Not a benchmark (nothing is timed here): a model over measured per-request figures
(docs/performance.md, counted by the moto server's CountingApp and bench/common.py) and AWS's and
Globus Compute's published quotas and prices (docs/scaling.md cites each, and marks what is an
assumption). Every bound is requests per second (or concurrent streams) one stage can sustain;
the smallest binds. Little's law throughout: what is held = rate × how long it is held.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass, field, replace

# --- measured (docs/performance.md, this repository's offline stack) --------------------------


@dataclass(frozen=True)
class Measured:
    # AWS calls per interactive request at concurrency 32 (4.30; 7.22 at concurrency 1), by kind.
    sqs_calls: float = 2.6  # SendMessage (enqueue, notice), ReceiveMessage, DeleteMessageBatch
    dynamodb_writes: float = 3.0  # PutItem (record) + UpdateItem (claim, complete)
    dynamodb_reads: float = 0.0  # the notice carries the result; the fallback read is rare
    # Federation adds the shared slot: TransactWriteItems per request (2.5-2.7 measured).
    slot_transactions: float = 2.6
    # Rate limiting: UpdateItem on the user's counter item (take, give back).
    user_counter_writes: float = 2.0
    # ASSUMPTION: the request record's size (a short prompt and answer). All AWS bytes per
    # request were 6 KB measured, over every call both ways; a write costs 1 WCU per KB of item.
    record_kb: float = 2.0
    api_cpu_ms: float = 4.5  # per request at concurrency 32 (docs/performance.md)
    poller_cpu_ms: float = 8.1
    gateway_overhead_s: float = 0.05  # added latency p50 at concurrency 1 (47.9 ms)
    # Streaming: one relay push per 50 ms per stream at most (FIRST_STREAM_FLUSH_MS).
    stream_flush_ms: float = 50.0
    relay_push_s: float = 0.03  # ASSUMPTION: a relay Lambda's duration per push on AWS
    log_bytes: float = 1500.0  # ASSUMPTION: JSON log + EMF bytes per request, all processes


# --- quotas (AWS defaults per account and region; Globus Compute's documented limits) ---------


@dataclass(frozen=True)
class Quotas:
    lambda_concurrency: int = 1000  # default per region, shared by every function
    api_gateway_rps: float = 10_000.0  # REST + WebSocket, account-level default (burst 5,000)
    dynamodb_partition_wcu: float = 1000.0  # per partition: one item's writes live on one
    dynamodb_table_wcu: float = 40_000.0  # on-demand table default (per-table quota)
    sqs_inflight_per_queue: int = 120_000  # standard queue; SQS throughput itself is unbounded
    # Globus Compute: 20 submit requests per 10 s per client (docs/limits.rst); ASSUMPTION that it
    # still holds and is per client id (every poller sharing one service client shares it).
    globus_submits_per_s: float = 2.0
    globus_result_bytes: int = 512 * 1024  # per task: larger results are lost (not a rate)


# --- prices (us-east-1, USD; docs/scaling.md gives the date and source) -----------------------


@dataclass(frozen=True)
class Prices:
    api_gateway_per_m: float = 3.50  # REST API, first 333 M requests a month
    websocket_message_per_m: float = 1.00
    lambda_request_per_m: float = 0.20
    lambda_gb_s: float = 0.0000166667  # x86
    sqs_per_m: float = 0.40  # standard queue requests (each 64 KB chunk)
    dynamodb_write_per_m: float = 0.625  # on-demand write request units
    dynamodb_read_per_m: float = 0.125
    logs_per_gb: float = 0.50  # CloudWatch Logs ingestion


@dataclass(frozen=True)
class Deployment:
    engine_s: float = 2.0  # the engine's time per request (queue wait on the HPC side included)
    lambda_memory_gb: float = 0.5  # .chalice/config.json: 512 MB
    endpoints: int = 2
    slots_per_endpoint: int = 64  # max_inflight in the registry
    globus_clients: int = 1  # distinct Globus service clients the pollers submit as
    # chalicelib/compute/globus.py group-commits: tasks arriving while a submission is in flight
    # (or paced) go in the next one, up to max_batch (64); under load that many per batch_run.
    tasks_per_submit: int = 64
    poller_max_inflight: int = 128
    poller_cores: float = 1.0
    globus_poll_min_s: float = 0.2
    globus_poll_max_s: float = 2.0


@dataclass(frozen=True)
class Model:
    measured: Measured = field(default_factory=Measured)
    quotas: Quotas = field(default_factory=Quotas)
    prices: Prices = field(default_factory=Prices)
    deployment: Deployment = field(default_factory=Deployment)

    @property
    def request_s(self) -> float:
        """How long a REST call holds its Lambda: the engine's time plus the gateway's."""
        return self.deployment.engine_s + self.measured.gateway_overhead_s

    def interactive_bounds(self) -> dict[str, float]:
        """Requests/s each part allows, interactive REST traffic only."""
        m, q, d = self.measured, self.quotas, self.deployment
        wcu_per_write = math.ceil(m.record_kb)
        return {
            # A waiting REST call holds one Lambda for its whole life.
            "lambda_concurrency": q.lambda_concurrency / self.request_s,
            "api_gateway_rps": q.api_gateway_rps,
            "dynamodb_requests_table": q.dynamodb_table_wcu / (m.dynamodb_writes * wcu_per_write),
            # Each endpoint's slot counter is one item (one partition), written in transactions
            # at 2 WCU a write; traffic spread evenly over the endpoints.
            "dynamodb_endpoint_slots": d.endpoints
            * q.dynamodb_partition_wcu
            / (2 * m.slot_transactions),
            "globus_submissions": d.globus_clients * q.globus_submits_per_s * d.tasks_per_submit,
        }

    def engine_rps(self) -> float:
        """What the HPC side serves: every slot busy for the engine's time (not AWS's part)."""
        d = self.deployment
        return d.endpoints * d.slots_per_endpoint / d.engine_s

    def per_user_rps(self) -> float:
        """One user's counter item (rate limits) is one partition's writes."""
        return self.quotas.dynamodb_partition_wcu / self.measured.user_counter_writes

    def binding(self) -> tuple[str, float]:
        bounds = self.interactive_bounds()
        name = min(bounds, key=lambda k: bounds[k])
        return name, bounds[name]

    def stream_bounds(self) -> dict[str, float]:
        """Concurrent streams each part allows (tokens faster than one push per flush)."""
        m, q = self.measured, self.quotas
        pushes_per_s = 1000.0 / m.stream_flush_ms
        return {
            "api_gateway_rps": q.api_gateway_rps / pushes_per_s,
            "lambda_concurrency": q.lambda_concurrency / (pushes_per_s * m.relay_push_s),
            "engine_slots": float(self.deployment.endpoints * self.deployment.slots_per_endpoint),
        }

    def globus_polls_per_task(self) -> int:
        """``GET /v2/tasks/<id>`` calls while a task runs: the interval doubles to its cap."""
        d = self.deployment
        waited, interval, polls = 0.0, d.globus_poll_min_s, 0
        while waited < d.engine_s:
            waited += interval
            polls += 1
            interval = min(d.globus_poll_max_s, interval * 2)
        return polls

    def pollers_needed(self, rps: float) -> int:
        """Pollers for ``rps``: enough CPU, and enough in-flight room for requests held for
        the engine's time (each poller holds ``poller_max_inflight``)."""
        d, m = self.deployment, self.measured
        by_cpu = rps * m.poller_cpu_ms / 1000.0 / d.poller_cores
        by_inflight = rps * self.request_s / d.poller_max_inflight
        return max(1, math.ceil(max(by_cpu, by_inflight)))

    def cost_per_million(self) -> dict[str, float]:
        """USD per million interactive requests, by service."""
        m, p, d = self.measured, self.prices, self.deployment
        writes = m.dynamodb_writes * math.ceil(m.record_kb) + m.slot_transactions * 2
        return {
            "api_gateway": p.api_gateway_per_m,
            "lambda_requests": p.lambda_request_per_m,
            "lambda_duration": 1e6 * self.request_s * d.lambda_memory_gb * p.lambda_gb_s,
            "sqs": m.sqs_calls * p.sqs_per_m,
            "dynamodb": (writes + m.user_counter_writes) * p.dynamodb_write_per_m
            + m.dynamodb_reads * p.dynamodb_read_per_m,
            "logs": 1e6 * m.log_bytes / 1e9 * p.logs_per_gb,
        }


def table(engine_times: list[float], base: Model | None = None) -> str:
    base = base or Model()
    rows = [
        "| engine s | binds first (AWS/Globus side) | at req/s | Lambda bound | Globus bound "
        "| engines serve | pollers | $ / M requests | of which Lambda duration |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for engine_s in engine_times:
        model = replace(base, deployment=replace(base.deployment, engine_s=engine_s))
        name, rps = model.binding()
        bounds = model.interactive_bounds()
        cost = model.cost_per_million()
        rows.append(
            f"| {engine_s:g} | {name} | {rps:,.1f} | {bounds['lambda_concurrency']:,.0f} "
            f"| {bounds['globus_submissions']:,.0f} | {model.engine_rps():,.0f} "
            f"| {model.pollers_needed(min(rps, model.engine_rps()))} | {sum(cost.values()):,.2f} "
            f"| {cost['lambda_duration']:,.2f} |"
        )
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--engine-s", type=float, nargs="+", default=[0.5, 2.0, 10.0, 25.0])
    args = parser.parse_args(argv)
    single = Model(deployment=Deployment(tasks_per_submit=1))
    print("One task per submission (before group commit), one Globus client:\n")
    print(table(args.engine_s, single))
    print("\nAs deployed (one Globus client, up to 64 tasks per submission):\n")
    print(table(args.engine_s))
    lifted = Model(deployment=Deployment(globus_clients=8, endpoints=8))
    print("\nEight Globus clients (up to 64 tasks per submission each), 8 endpoints:\n")
    print(table(args.engine_s, lifted))
    model = Model()
    print("\nOther bounds (req/s):", {k: round(v) for k, v in model.interactive_bounds().items()})
    print("One user's rate-limit counter (req/s):", round(model.per_user_rps()))
    print("Concurrent streams:", {k: round(v) for k, v in model.stream_bounds().items()})
    print("Globus task polls per task at 2 s:", model.globus_polls_per_task())
    print(
        "Cost per million at 2 s ($):",
        {k: round(v, 2) for k, v in model.cost_per_million().items()},
    )


if __name__ == "__main__":
    main()
