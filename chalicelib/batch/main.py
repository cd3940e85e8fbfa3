"""``python -m chalicelib.batch.main``: run one batch worker until SIGTERM/SIGINT.

Batches in flight stop at the next shard boundary; their messages reappear and a worker resumes
them from their records."""

from __future__ import annotations

from chalicelib.batch.root import build, start_accounting
from chalicelib.consumer.loop import run_until_signalled
from chalicelib.root import Root


def main() -> None:
    root = Root()
    worker = build(root)
    accounting = start_accounting(worker, root)
    run_until_signalled(worker.consumer, worker.run)
    # Usage records still queued are written, and the last metrics flushed, before exit.
    accounting.close()


if __name__ == "__main__":
    main()
