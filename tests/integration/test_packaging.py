"""The app packages for Lambda without any AWS endpoint, into a template cfn-lint accepts."""

import json
import os
import subprocess
import sys
from pathlib import Path

from chalicelib.settings import REPO_ROOT

BIN = Path(sys.executable).parent


def test_chalice_package_emits_a_valid_sam_template(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_ENDPOINT")}
    env["AWS_DEFAULT_REGION"] = "us-east-1"
    subprocess.run(
        [str(BIN / "chalice"), "package", "--stage", "prod", str(tmp_path)],
        cwd=REPO_ROOT,
        env=env,
        check=True,
        capture_output=True,
    )
    sam = json.loads((tmp_path / "sam.json").read_text())
    assert any(r["Type"] == "AWS::Serverless::Function" for r in sam["Resources"].values())
    lint = subprocess.run(
        [
            str(BIN / "cfn-lint"),
            str(tmp_path / "sam.json"),
            str(REPO_ROOT / "infra" / "resources.yaml"),
        ],
        capture_output=True,
        text=True,
    )
    assert lint.returncode == 0, lint.stdout
