"""The offline stack: local AWS endpoint, API server, compute endpoint, orchestration."""
