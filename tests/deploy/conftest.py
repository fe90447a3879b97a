"""Deploy fixtures: the compose file as `docker compose config` renders it, and the real Redis,
worker and version store of the job and service tests."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.deploy.manifests import SECRETS, compose_config
from tests.jobs.conftest import redis_server  # noqa: F401 (the real Redis of the job tests)
from tests.service.conftest import version_store  # noqa: F401 (a store with real versions)


@pytest.fixture(scope="session")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """deploy/docker-compose.yml rendered with the required variables, every profile included."""
    done = compose_config(SECRETS, tmp_path_factory.mktemp("compose"), "--profile", "*")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)
