"""HPC functions as jobs, the pure parts: the registry's functions, input checked against a
function's JSON Schema (400 naming the field), the job view, and the scientific function itself
on images made here with numpy (a known number of blobs), hostile images included."""

from __future__ import annotations

import base64
import io
import json
import struct
import zlib
from typing import Any

import numpy as np
import pytest
from PIL import Image

from chalicelib.jobs import STATUS, input_error, job_view
from chalicelib.registry import FUNCTION_KIND, Registry
from chalicelib.settings import REPO_ROOT
from hpc_functions.jobs import JobContext, run_job
from hpc_functions.science import (
    COUNT_OBJECTS_SCHEMA,
    SLEEP_STEPS_SCHEMA,
    count_objects_job,
)

LOCAL = REPO_ROOT / "infra" / "deployments" / "local.json"
COUNT = "first/count-objects"


def local() -> Registry:
    return Registry.load(LOCAL, {"FIRST_HOME": "/h", "FIRST_LOCAL_ENDPOINT_B_URL": "http://x"})


def blobs_image(centres: list[tuple[int, int]], radius: int = 6, size: int = 128) -> np.ndarray:
    """A dark noisy field with one bright disc per centre (x, y)."""
    rng = np.random.default_rng(7)
    image = rng.normal(30, 5, (size, size))
    yy, xx = np.mgrid[:size, :size]
    for x, y in centres:
        image[(xx - x) ** 2 + (yy - y) ** 2 <= radius**2] = 200 + rng.normal(0, 5)
    return np.clip(image, 0, 255).astype(np.uint8)


def png_base64(pixels: np.ndarray) -> str:
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return base64.b64encode(out.getvalue()).decode()


def task(args: dict[str, Any], max_output_bytes: int = 1 << 20) -> dict[str, Any]:
    engine = {"kind": FUNCTION_KIND, "function": COUNT, "max_output_bytes": max_output_bytes}
    return {"request_id": "req_x", "engine": engine, "body": {"input": args, "files": []}}


CENTRES = [(20, 20), (60, 25), (100, 30), (30, 80), (75, 70), (110, 100), (50, 110)]


def test_the_local_registry_declares_functions_routed_like_deployments() -> None:
    reg = local()
    assert [f.name for f in reg.functions] == [COUNT, "first/sleep-steps"]
    assert COUNT not in reg.model_ids()  # functions are not models
    found = reg.candidates(COUNT, "count_objects")
    assert [e.name for e, _ in found] == ["local-a", "local-b"]
    deployment = found[0][1]
    assert deployment.model == COUNT and deployment.engine["kind"] == FUNCTION_KIND
    assert reg.candidates(COUNT, "chat_completions") == []


def test_the_registry_schemas_are_the_functions_own() -> None:
    """The API checks input against the registry's copy; the node's function declares it."""
    reg = local()
    assert reg.function(COUNT).input_schema == COUNT_OBJECTS_SCHEMA  # type: ignore[union-attr]
    assert reg.function("first/sleep-steps").input_schema == SLEEP_STEPS_SCHEMA  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"functions": [{"name": "f", "function": "g", "endpoints": ["nowhere"]}]}, "unknown"),
        ({"functions": [{"name": "f", "function": "g"}] * 2}, "twice"),
    ],
)
def test_a_bad_function_declaration_is_refused_at_load(
    change: dict[str, Any], message: str
) -> None:
    data = {**json.loads(LOCAL.read_text()), **change}
    with pytest.raises(ValueError, match=message):
        Registry.from_dict(data)


@pytest.mark.parametrize(
    ("value", "param"),
    [
        ({"threshold": "mean"}, "input.threshold"),
        ({"min_area": 0}, "input.min_area"),
        ({"bogus": 1}, "input"),
    ],
)
def test_input_against_the_schema_is_a_400_naming_the_field(
    value: dict[str, Any], param: str
) -> None:
    spec = local().function(COUNT)
    assert spec is not None
    error = input_error(spec, value)
    assert error is not None and error.STATUS_CODE == 400
    assert error.to_body()["error"]["param"] == param
    assert input_error(spec, {"image_base64": "AAAA", "threshold": 12.5}) is None


def test_the_job_view_names_the_job_statuses() -> None:
    assert STATUS == {
        "queued": "queued",
        "dispatched": "running",
        "completed": "succeeded",
        "failed": "failed",
        "cancelled": "cancelled",
    }
    record = {"request_id": "req_1", "model": COUNT, "status": "dispatched", "created_at": 5.5}
    view = job_view(record)
    assert view["id"] == "req_1" and view["object"] == "job" and view["function"] == COUNT
    assert (view["status"], view["created_at"], view["result"]) == ("running", 5, None)
    failed = job_view({**record, "status": "failed", "error": {"message": "x"}})
    assert failed["error"] == {"message": "x"}


def test_count_objects_counts_and_measures_generated_blobs() -> None:
    pixels = blobs_image(CENTRES)
    out = count_objects_job(JobContext(task({"image_base64": png_base64(pixels)})))
    assert out["count"] == len(CENTRES)
    assert out["image"] == {"width": 128, "height": 128}
    found = sorted((round(o["centroid"]["x"]), round(o["centroid"]["y"])) for o in out["objects"])
    assert found == sorted(CENTRES)
    disc = np.pi * 6**2
    assert all(0.8 * disc < o["area"] < 1.2 * disc for o in out["objects"])
    assert all(o["mean_intensity"] > 150 for o in out["objects"])


def test_count_objects_inverted_and_with_a_minimum_area() -> None:
    pixels = 255 - blobs_image(CENTRES)  # dark objects on a bright field
    args = {"image_base64": png_base64(pixels), "invert": True, "min_area": 50}
    assert count_objects_job(JobContext(task(args)))["count"] == len(CENTRES)
    args["min_area"] = 10_000
    assert count_objects_job(JobContext(task(args)))["count"] == 0


def huge_png_header(width: int, height: int) -> bytes:
    """A valid PNG signature and IHDR claiming ``width`` x ``height``, and no pixels."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    return (
        b"\x89PNG\r\n\x1a\n"
        + struct.pack(">I", len(ihdr))
        + chunk
        + struct.pack(">I", zlib.crc32(chunk) & 0xFFFFFFFF)
    )


@pytest.mark.parametrize(
    "data",
    [
        base64.b64decode(png_base64(blobs_image(CENTRES)))[:200],  # truncated
        huge_png_header(100_000, 100_000),  # a decompression bomb's header
        b"this is not an image at all",
    ],
    ids=["truncated", "huge", "not-an-image"],
)
def test_a_hostile_image_fails_the_job_as_a_400_not_a_crash(data: bytes) -> None:
    out = run_job(count_objects_job, task({"image_base64": base64.b64encode(data).decode()}))
    assert out["status_code"] == 400 and out["error"]["code"] == "invalid_input"


def test_a_result_over_the_functions_output_limit_fails_the_job() -> None:
    args = {"image_base64": png_base64(blobs_image(CENTRES))}
    out = run_job(count_objects_job, task(args, max_output_bytes=100))
    assert out["error"]["code"] == "output_too_large"
    ok = run_job(count_objects_job, task(args))
    assert ok["response"]["count"] == len(CENTRES) and ok["engine_time_ms"] > 0
