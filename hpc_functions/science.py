"""Scientific HPC functions served as jobs (``POST /v1/jobs``; ``hpc_functions.jobs``).

``count_objects``: cells in a micrograph, stars in a sky image: threshold the image (Otsu's
method, or a given level), label the connected regions, and measure each with scikit-image's
region properties: the count, and per object its area, centroid, bounding box and intensities.
The image comes as a file (``files`` of the job, any format Pillow reads) or inline as base64
(``image_base64``); its pixels are bounded before it is decoded (``MAX_PIXELS``), so a small
file that claims huge dimensions (a decompression bomb) is refused, not decoded.

``sleep_steps``: sleeps in steps, reporting progress and checking for cancel between them: what
the tests and the benchmark use to see a job's progress, cancel and added latency.
"""

from __future__ import annotations

from typing import Any

# Modes decoded to luminance first (8-bit and 16-bit grey, and float, are measured as they are).
_COLOUR = ("RGB", "RGBA", "P", "LA", "CMYK", "YCbCr", "1")
# 64 megapixels: a large micrograph or survey tile; more is refused before decoding.
MAX_PIXELS = 64 * 1024 * 1024

COUNT_OBJECTS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "image_base64": {"type": "string", "minLength": 1},
        "file_index": {"type": "integer", "minimum": 0, "default": 0},
        "threshold": {
            "oneOf": [{"const": "otsu"}, {"type": "number"}],
            "default": "otsu",
        },
        "invert": {"type": "boolean", "default": False},
        "min_area": {"type": "integer", "minimum": 1, "default": 1},
        "max_objects": {"type": "integer", "minimum": 0, "maximum": 100000, "default": 1000},
    },
    "additionalProperties": False,
}

SLEEP_STEPS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "steps": {"type": "integer", "minimum": 1, "maximum": 10000},
        "step_s": {"type": "number", "minimum": 0, "maximum": 60},
    },
    "required": ["steps", "step_s"],
    "additionalProperties": False,
}


def _image(context: Any) -> Any:
    """The job's image as a 2-D float array (colour to luminance), bounded before decoding."""
    import base64
    import binascii
    import io

    import numpy as np
    from PIL import Image, UnidentifiedImageError

    from hpc_functions.jobs import JobInputError

    args = context.input
    if args.get("image_base64"):
        try:
            data = base64.b64decode(args["image_base64"], validate=True)
        except (binascii.Error, ValueError) as exc:
            raise JobInputError("image_base64 is not base64") from exc
    else:
        data = context.file_bytes(int(args.get("file_index", 0)))
    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
            if width * height > MAX_PIXELS:
                raise JobInputError(
                    f"the image is {width}x{height} pixels; at most {MAX_PIXELS} are allowed"
                )
            image.load()
            gray = image.convert("L") if image.mode in _COLOUR else image
            pixels = np.asarray(gray, dtype=np.float64)
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as exc:
        raise JobInputError(f"the image could not be decoded: {type(exc).__name__}") from exc
    if pixels.ndim != 2:
        raise JobInputError(f"expected a 2-D image, got shape {list(pixels.shape)}")
    return pixels


def count_objects_job(context: Any) -> dict[str, Any]:
    """Count and measure the bright (``invert``: dark) objects of the job's image."""
    import numpy as np
    from skimage.filters import threshold_otsu
    from skimage.measure import label, regionprops

    args = context.input
    gray = _image(context)
    context.progress(0.1, stage="decoded")
    context.check()
    if args.get("threshold", "otsu") == "otsu":
        # A flat image has no two classes: everything is background.
        level = float(threshold_otsu(gray)) if gray.min() < gray.max() else float(gray.max())
    else:
        level = float(args["threshold"])
    mask = gray < level if args.get("invert") else gray > level
    context.progress(0.3, stage="thresholded")
    context.check()
    labels = label(mask, connectivity=2)
    context.progress(0.5, stage="labelled")
    min_area = int(args.get("min_area", 1))
    max_objects = int(args.get("max_objects", 1000))
    regions = regionprops(labels, intensity_image=gray)
    objects: list[dict[str, Any]] = []
    count = 0
    areas: list[float] = []
    for i, region in enumerate(regions):
        if i % 256 == 0:
            context.check()
            context.progress(0.5 + 0.5 * i / max(1, len(regions)), stage="measuring")
        if region.area < min_area:
            continue
        count += 1
        areas.append(float(region.area))
        if len(objects) < max_objects:
            row, col = region.centroid
            objects.append(
                {
                    "label": int(region.label),
                    "area": int(region.area),
                    "centroid": {"x": round(float(col), 3), "y": round(float(row), 3)},
                    "bbox": [int(v) for v in region.bbox],
                    "mean_intensity": round(float(region.intensity_mean), 4),
                    "max_intensity": round(float(region.intensity_max), 4),
                    "eccentricity": round(float(region.eccentricity), 4),
                }
            )
    return {
        "count": count,
        "threshold": round(level, 4),
        "image": {"width": int(gray.shape[1]), "height": int(gray.shape[0])},
        "area": {
            "total": float(np.sum(areas)) if areas else 0.0,
            "mean": float(np.mean(areas)) if areas else 0.0,
        },
        "objects": objects,
        "objects_listed": len(objects),
    }


def sleep_steps_job(context: Any) -> dict[str, Any]:
    """Sleep ``steps`` times ``step_s``, reporting progress and checking for cancel."""
    import os
    import time

    steps, step_s = int(context.input["steps"]), float(context.input["step_s"])
    started = time.perf_counter()
    for step in range(steps):
        context.check()
        time.sleep(step_s)
        # The worker's pid: which process a test kills to lose the task mid-job.
        context.progress((step + 1) / steps, step=step + 1, steps=steps, pid=os.getpid())
    return {"steps": steps, "slept_s": round(time.perf_counter() - started, 3)}
