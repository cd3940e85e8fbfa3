"""The poller's Dockerfile, read without a Docker engine: its base, user and entrypoint, and
that what it copies is enough. The files its ``COPY`` lines name (minus ``.dockerignore``) go
into a temporary folder, and a fresh interpreter with only that folder and the installed
packages on its path imports the poller and its Globus Compute executor: a module the poller
needs but the image lacks fails here. Every third-party package that import loads must come
with the image's requirements (``requirements-poller.txt``, dependencies included), not only
with the developer's environment."""

from __future__ import annotations

import fnmatch
import json
import re
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

from chalicelib.settings import REPO_ROOT

DOCKERFILE = REPO_ROOT / "Dockerfile"
POLLER_MODULES = ["chalicelib.poller.main", "chalicelib.compute.globus", "globus_compute_sdk"]


def instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    lines = [line.strip() for line in text.splitlines()]
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1])
        for line in lines
        if line and not line.startswith("#")
    ]


def ignored(relative: str) -> bool:
    """``.dockerignore`` as Docker reads it: last matching pattern wins, ``!`` re-includes."""
    verdict = False
    for raw in (REPO_ROOT / ".dockerignore").read_text().splitlines():
        pattern = raw.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").rstrip("/")
        parts = relative.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        names = [pattern, pattern.replace("**/", "")]
        if (
            any(fnmatch.fnmatch(p, n) for p in prefixes for n in names)
            or any(fnmatch.fnmatch(part, pattern.replace("**/", "")) for part in parts)
            and pattern.startswith("**/")
        ):
            verdict = not negate
    return verdict


def copy_context(into: Path) -> list[str]:
    """Copy what the Dockerfile's COPY lines take from the build context; their sources."""
    sources: list[str] = []
    for op, args in instructions():
        if op == "COPY":
            *srcs, _dest = args.split()
            sources += srcs
    for source in sources:
        for path in [REPO_ROOT / source, *(REPO_ROOT / source).rglob("*")]:
            relative = str(path.relative_to(REPO_ROOT))
            if path.is_file() and not ignored(relative):
                (into / relative).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, into / relative)
    return sources


def requirement_closure(requirements: Path) -> set[str]:
    """The distributions a requirements file installs, with their dependencies."""

    def name(spec: str) -> str:
        return re.split(r"[ ;<>=!~\[]", spec.strip(), maxsplit=1)[0].lower().replace("_", "-")

    wanted: list[str] = []
    for line in requirements.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line.startswith("-r"):
            wanted += sorted(requirement_closure(requirements.parent / line[2:].strip()))
        elif line:
            wanted.append(name(line))
    seen: set[str] = set()
    while wanted:
        dist = wanted.pop()
        if dist in seen:
            continue
        seen.add(dist)
        try:
            requires = metadata.requires(dist) or []
        except metadata.PackageNotFoundError:
            continue
        wanted += [name(r) for r in requires if "extra ==" not in r]
    return seen


def test_the_image_is_a_slim_python_running_the_poller_as_a_user() -> None:
    ops = instructions()
    assert ops[0] == ("FROM", "python:3.11-slim")
    users = [args for op, args in ops if op == "USER"]
    assert users and users[-1] not in ("root", "0"), "the poller must not run as root"
    (entrypoint,) = [json.loads(args) for op, args in ops if op == "ENTRYPOINT"]
    assert entrypoint == ["python", "-m", "chalicelib.poller.main"]
    assert "pip install -r requirements-poller.txt" in [args for op, args in ops if op == "RUN"]


# Imported only because the dev venv has them (another dev tool installs them); the importing
# package runs without them, as it does in the image.
OPTIONAL_WHEN_PRESENT = {
    # globus_sdk/_internal/orjson_compat.py: try: import orjson / except ImportError (langsmith,
    # a LangChain dependency of the e2e tests, installs it).
    "orjson",
}


def test_the_poller_imports_from_what_the_image_copies(tmp_path: Path) -> None:
    sources = copy_context(tmp_path)
    assert set(sources) == {"requirements.txt", "requirements-poller.txt", "chalicelib/"}
    assert not list(tmp_path.rglob("__pycache__")), ".dockerignore keeps caches out"
    # Only the copied tree and site-packages: the repository (on the path through the editable
    # install) and the current directory are taken away before the import.
    probe = f"""
import json, sys
before = set(sys.modules)  # the interpreter's own start (site, .pth hooks), not the poller's
sys.path[:] = [{str(tmp_path)!r}] + [p for p in sys.path if p not in ("", {str(REPO_ROOT)!r})]
for name in {POLLER_MODULES!r}:
    __import__(name)
ours = sorted(m.__file__ for m in list(sys.modules.values())
              if getattr(m, "__file__", None) and m.__file__.startswith({str(REPO_ROOT)!r})
              and not m.__file__.startswith(sys.prefix))
top = sorted({{n.split(".")[0] for n in set(sys.modules) - before}})
print(json.dumps({{"ours": ours, "top": top}}))
"""
    out = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    loaded = json.loads(out.stdout.strip().splitlines()[-1])
    assert loaded["ours"] == [], "imported from the repository, not from the image's copy"
    allowed = requirement_closure(REPO_ROOT / "requirements-poller.txt")
    packages = metadata.packages_distributions()
    foreign = {
        (module, dist)
        for module in loaded["top"]
        for dist in packages.get(module, [])
        if module not in sys.stdlib_module_names
        and dist.lower().replace("_", "-") not in allowed
        and module != "chalicelib"
        and module not in OPTIONAL_WHEN_PRESENT
    }
    assert foreign == set(), "the poller imports packages the image does not install"


def test_the_image_pins_the_sdk_as_the_developers_do() -> None:
    def pins(path: Path) -> dict[str, str]:
        found = re.findall(r"^([A-Za-z0-9_.-]+)==(\S+)", path.read_text(), re.M)
        return {n.lower(): v for n, v in found}

    poller = pins(REPO_ROOT / "requirements-poller.txt")
    dev = pins(REPO_ROOT / "requirements-dev.txt")
    assert poller["globus-compute-sdk"] == dev["globus-compute-sdk"]
