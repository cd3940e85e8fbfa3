"""A user's own function module, as ``first functions register --module`` takes it (docs/hpc.md):
``FUNCTIONS`` to register, ``JOBS`` to declare as jobs."""

from __future__ import annotations

from typing import Any


def mean_of(task: dict[str, Any]) -> dict[str, Any]:
    """A job: the mean of ``input.values``."""
    from hpc_functions.jobs import run_job

    def job(context: Any) -> dict[str, Any]:
        values = [float(v) for v in context.input["values"]]
        return {"mean": sum(values) / len(values)}

    return run_job(job, task)


FUNCTIONS = {"mean_of": mean_of}
JOBS = [
    {
        "name": "lab/mean-of",
        "function": "mean_of",
        "description": "The mean of some numbers.",
        "input_schema": {
            "type": "object",
            "properties": {"values": {"type": "array", "items": {"type": "number"}, "minItems": 1}},
            "required": ["values"],
        },
        "access": {"groups": ["lab"]},
    }
]
