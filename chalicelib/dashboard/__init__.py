"""The operator page (``/dashboard``): a static shell and the JSON it reads (docs/operations.md)."""
