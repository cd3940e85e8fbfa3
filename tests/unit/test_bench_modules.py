"""The benchmarks stay importable (they run by hand, so nothing else would notice)."""

import importlib

import pytest


@pytest.mark.parametrize(
    "name",
    [
        "bench.interactive",
        "bench.auth_overhead",
        "bench.common",
        "bench.constrained",
        "bench.jobs",
        "bench.dialects",
        "bench.affinity",
        "bench.proxy",
        "bench.server_layers",
    ],
)
def test_benchmark_module_imports(name: str) -> None:
    module = importlib.import_module(name)
    assert callable(getattr(module, "main", None)) or name == "bench.common"
