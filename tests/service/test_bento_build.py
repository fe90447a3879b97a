"""`bentoml build` accepts bentofile.yaml and packs the three packages (no network needed)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.service.stack import REPO

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def test_bentoml_build(tmp_path: Path) -> None:
    env = {**os.environ, "BENTOML_HOME": str(tmp_path), "BENTOML_DO_NOT_TRACK": "true"}
    bentoml = Path(sys.executable).parent / "bentoml"
    done = subprocess.run(
        [str(bentoml), "build", str(REPO)], env=env, capture_output=True, text=True, timeout=280
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    (bento,) = [p for p in (tmp_path / "bentos" / "janus").iterdir() if p.name != "latest"]
    src = bento / "src"
    for module in ("service/service.py", "learner/onnx_export.py", "adapters_store/store.py"):
        assert (src / module).is_file()
    assert not (src / "tests").exists()
    assert "service.service:Janus" in (bento / "bento.yaml").read_text()
