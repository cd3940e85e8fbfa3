"""The compute seam: where the poller sends tasks (Globus Compute, or the local endpoint)."""
