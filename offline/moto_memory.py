"""Keep a long-running moto server's memory proportional to the data it holds.

moto's ``BaseModel.__new__`` appends every model object it ever creates to a class-level
``instances_tracked`` list, for its ``/moto-api/data.json`` dashboard, and never removes one:
a deleted SQS message, an overwritten S3 object or DynamoDB item stays in memory for the life
of the server. Worse, moto's ``transact_write_items`` deep-copies every table a transaction
touches (its rollback copy), and each copied ``Table`` and ``Item`` was tracked too, so every
transaction kept a whole copy of the requests table alive: memory grew with requests × table
size (measured: 223 MB → 4.9 GB in a 4-minute soak; docs/performance.md). The embedded server
no longer makes those copies at all (``offline/moto_transactions.py`` snapshots only the items
a transaction touches).

FIRST never reads that dashboard, so the embedded server stops the tracking; what moto still
references (tables, queues, buckets) is unchanged, and everything else is freed as usual.
"""

from __future__ import annotations

import gc
import resource
import tracemalloc
from collections import Counter
from typing import Any

from moto.core.common_models import BaseModel
from moto.core.model_instances import reset_model_data


def _untracked_new(cls: type[Any], *args: Any, **kwargs: Any) -> Any:
    # BaseModel.__new__ without the append: object.__new__ takes no constructor arguments.
    return object.__new__(cls)


def stop_instance_tracking() -> None:
    """Stop moto recording every model object it creates, and drop what it recorded so far."""
    BaseModel.__new__ = staticmethod(_untracked_new)  # type: ignore[method-assign]
    reset_model_data()


def tracked_instances() -> int:
    """How many model objects moto's dashboard registry holds (0 once tracking is stopped)."""
    from moto.core.model_instances import model_data

    return sum(
        len(getattr(model, "instances_tracked", ()))
        for models in model_data.values()
        for model in models.values()
    )


def rss_bytes() -> int:
    """This process's resident set size (Linux ``/proc``; peak RSS elsewhere)."""
    try:
        with open("/proc/self/statm", encoding="ascii") as f:
            return int(f.read().split()[1]) * resource.getpagesize()
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def memory_report(by: str = "lineno", top: int = 12) -> dict[str, Any]:
    """What holds this process's memory: RSS, moto's registry, live objects by type and, while
    ``tracemalloc`` traces, the allocation sites holding the most (``by``: lineno, traceback,
    filename). Collects garbage first, so only what is still referenced counts."""
    gc.collect()
    report: dict[str, Any] = {
        "rss_bytes": rss_bytes(),
        "moto_tracked_instances": tracked_instances(),
        "objects_by_type": Counter(type(o).__name__ for o in gc.get_objects()).most_common(top),
        "tracing": tracemalloc.is_tracing(),
    }
    if tracemalloc.is_tracing():
        stats = tracemalloc.take_snapshot().statistics(by)
        report["traced_bytes"] = sum(s.size for s in stats)
        report["top"] = [
            {"size_bytes": s.size, "count": s.count, "where": s.traceback.format()[-12:]}
            for s in stats[:top]
        ]
    return report
