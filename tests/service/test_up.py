"""`janus up` as a user runs it: the stack comes up, a curl pasted from its output classifies an
image, and Ctrl-C (SIGINT) stops the service, the worker and Redis, leaving no process behind."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from tests.service.stack import processes_using, start_up

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(300)]


def test_up_serves_and_stops_cleanly(version_store: Path, tmp_path: Path) -> None:
    up = start_up(version_store, tmp_path)
    try:
        text = up.wait_banner()
        assert up.url in text and f"{up.url}/console" in text
        assert (up.data_dir / "admin-token").read_text().strip() in text
        curl = next(line.strip() for line in text.splitlines() if "curl -s -F images=@" in line)
        answer = subprocess.run(["bash", "-c", curl], capture_output=True, text=True, timeout=60)
        assert '"version":"v0002"' in answer.stdout, answer
    finally:
        code = up.stop()
    assert code == 0, up.output()
    time.sleep(1)
    assert processes_using(str(up.data_dir)) == []
