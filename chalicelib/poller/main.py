"""``python -m chalicelib.poller.main``: run one poller until SIGTERM/SIGINT."""

from __future__ import annotations

from chalicelib.consumer.loop import run_until_signalled
from chalicelib.poller.root import build, start_accounting
from chalicelib.root import Root


def main() -> None:
    root = Root()
    poller = build(root)
    accounting = start_accounting(poller, root)
    run_until_signalled(poller.consumer, poller.run)
    # Usage records still queued are written, and the last metrics flushed, before exit.
    accounting.close()


if __name__ == "__main__":
    main()
