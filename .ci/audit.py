"""``make audit``: pip-audit of the pinned requirements, reported plainly.

pip-audit checks each pinned ``name==version`` against a vulnerability service. It exits 0 both
when every package was checked and found clean and when the service could not answer for a
package at all ("Dependency not found … could not be audited"), which reads as clean but is not.
So this reads its JSON report and says which it was:

- a known vulnerability in any pin: exit 1, listing them (the only failure);
- packages the service did not answer for: listed, with why; exit 0, or 1 with ``--strict``;
- no report at all (the service unreachable): pip-audit's last words; exit 0, or 1 with
  ``--strict``.

``--no-deps``: the files are pinned, so nothing is resolved (no virtualenv, no downloads); the
audit covers exactly the pins. ``--report FILE`` summarises an existing JSON report instead.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
REQUIREMENTS = [
    "requirements.txt",
    "requirements-dev.txt",
    "requirements-endpoint.txt",
    "hpc_functions/requirements.txt",
]


def run_pip_audit(report: Path) -> tuple[int, str]:
    args = [sys.executable, "-m", "pip_audit", "--no-deps", "--disable-pip", "--progress-spinner"]
    args += ["off", "--format", "json", "--output", str(report)]
    for name in REQUIREMENTS:
        args += ["-r", str(ROOT / name)]
    done = subprocess.run(args, capture_output=True, text=True, cwd=ROOT)
    return done.returncode, (done.stderr or done.stdout).strip()


def summarise(report: dict[str, Any]) -> tuple[list[str], list[str], int]:
    """(vulnerabilities, packages not audited, packages audited clean)."""
    vulns: list[str] = []
    skipped: list[str] = []
    clean = 0
    for dep in report.get("dependencies", []):
        if "skip_reason" in dep:
            skipped.append(f"{dep['name']}: {dep['skip_reason']}")
            continue
        found = dep.get("vulns") or []
        if not found:
            clean += 1
        for v in found:
            fix = ", ".join(v.get("fix_versions") or []) or "none yet"
            vulns.append(f"{dep['name']}=={dep.get('version')}: {v.get('id')} (fixed in: {fix})")
    return vulns, skipped, clean


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--report", type=Path, help="summarise this pip-audit JSON report")
    p.add_argument("--strict", action="store_true", help="also fail when not every pin was audited")
    a = p.parse_args(argv)
    if a.report:
        path, rc, said = a.report, 0, ""
    else:
        path = Path(tempfile.mkdtemp()) / "pip-audit.json"
        rc, said = run_pip_audit(path)
    try:
        report = json.loads(path.read_text())
    except (OSError, ValueError):
        print(f"audit: NOT RUN: pip-audit exited {rc} without a report (vulnerability service")
        print("audit: unreachable from this machine?). Its last lines:")
        for line in said.splitlines()[-5:]:
            print(f"  {line}")
        return 1 if a.strict else 0
    vulns, skipped, clean = summarise(report)
    total = clean + len(skipped) + len({v.split("==")[0] for v in vulns})
    print(f"audit: {total} pinned packages; {clean} audited clean, {len(vulns)} vulnerabilities,")
    print(f"audit: {len(skipped)} NOT audited (the vulnerability service had no answer for them)")
    for line in skipped:
        print(f"  not audited: {line}")
    for line in vulns:
        print(f"  VULNERABLE: {line}")
    if vulns:
        return 1
    return 1 if a.strict and skipped else 0


if __name__ == "__main__":
    sys.exit(main())
