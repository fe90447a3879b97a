"""Console fixtures: a real `janus up` (on a copy of the service tests' store, with a golden set of
digits attached) and a real headless browser, Debian's Chromium driven by Playwright.

Set `JANUS_CONSOLE_SCREENSHOTS=docs/console` to have the tests save the views they reach, in the
light and the dark theme (`screenshot`); without it they take none.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image
from playwright.sync_api import Browser, Page, sync_playwright

from learner.data import LabeledBatch, write_class_folders
from tests.service.conftest import version_store  # noqa: F401 (v0001, v0002 serving, v0003)
from tests.service.stack import JanusUp, archive, start_up

ADMIN = "console-admin-token-0123456789"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
VIEWPORT = {"width": 1280, "height": 800}
GOLDEN_PER_CLASS = 20
"""The last images of each digit: the golden set, never in a learn job's data."""
TRAIN = {"epochs": 1, "num_threads": 1, "design_samples": 64}
SCREENSHOTS = os.environ.get("JANUS_CONSOLE_SCREENSHOTS")
"""The folder the tests save their screenshots to (none when unset)."""


@dataclass
class Console:
    """`janus up` with its admin token, and the digits its learn jobs upload."""

    up: JanusUp
    digits: LabeledBatch
    root: Path

    @property
    def url(self) -> str:
        return self.up.url

    def get(self, path: str) -> Any:
        r = httpx.get(f"{self.url}{path}", headers={"Authorization": f"Bearer {ADMIN}"}, timeout=60)
        r.raise_for_status()
        return r.json()

    def learn(self, names: list[str], **fields: Any) -> str:
        """Submits a learn job on these digit classes as an uploaded archive; its job id."""
        folder = write_class_folders(
            self.digits.select_classes(names), self.root / "datasets" / "_".join(names)
        )
        r = httpx.post(
            f"{self.url}/admin/learn",
            files={"dataset": ("d.tar.gz", archive(folder), "application/gzip")},
            data={"request": json.dumps({"train": TRAIN, **fields})},
            headers={"Authorization": f"Bearer {ADMIN}"},
            timeout=60,
        )
        assert r.status_code == 202, r.text
        return str(r.json()["job_id"])

    def wait_job(self, job_id: str, timeout: float = 120.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            job = self.get(f"/admin/jobs/{job_id}")
            if job["state"] in ("succeeded", "failed", "cancelled"):
                return dict(job)
            time.sleep(0.3)
        raise TimeoutError(f"job {job_id} did not end:\n{self.up.output()[-2000:]}")

    def versions(self) -> dict[str, dict[str, Any]]:
        return {v["id"]: v for v in self.get("/admin/versions")}

    def serving(self) -> str:
        return next(v["id"] for v in self.get("/admin/versions") if v["serving"])


def _golden_split(digits: LabeledBatch) -> tuple[LabeledBatch, LabeledBatch]:
    """(training digits, golden digits): the golden set is each class's last images."""
    golden = np.concatenate(
        [np.flatnonzero(digits.labels == c)[-GOLDEN_PER_CLASS:] for c in range(10)]
    )
    rest = np.setdiff1d(np.arange(len(digits)), golden)
    return digits.subset(rest), digits.subset(golden)


@pytest.fixture(scope="module")
def console(
    version_store: Path,  # noqa: F811
    digits: LabeledBatch,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Console]:
    root = tmp_path_factory.mktemp("console")
    up = start_up(version_store, root, {"JANUS_ADMIN_TOKEN": ADMIN})
    train, golden = _golden_split(digits)
    try:
        up.wait_banner()
        folder = write_class_folders(golden, root / "golden")
        r = httpx.post(
            f"{up.url}/admin/evalsets",
            files={"dataset": ("golden.tar.gz", archive(folder), "application/gzip")},
            headers={"Authorization": f"Bearer {ADMIN}"},
            timeout=60,
        )
        assert r.status_code == 200, r.text
        yield Console(up, train, root)
    finally:
        up.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        pytest.fail(
            f"{CHROMIUM} is missing: install Debian's Chromium (`apt-get install -y chromium`; "
            "`make test` does it when run as root)"
        )
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture()
def page(browser: Browser) -> Iterator[Page]:
    """A fresh tab (its own sessionStorage) at 1280×800 in the light theme."""
    context = browser.new_context(viewport=VIEWPORT, color_scheme="light")
    yield context.new_page()
    context.close()


@pytest.fixture()
def requested(page: Page) -> list[str]:
    """Every URL the tab asks for, from here on."""
    urls: list[str] = []
    page.on("request", lambda request: urls.append(request.url))
    return urls


def log_in(page: Page, url: str, token: str) -> None:
    """Opens the console and submits the login form; returns once the page answered."""
    page.goto(f"{url}/console")
    page.fill("#token-input", token)
    page.click("#login-form button[type=submit]")
    page.wait_for_function(  # a function, not an expression: the page's CSP forbids eval
        "() => !document.getElementById('main').hidden"
        " || document.getElementById('login-error').textContent !== ''"
    )


def wait_text(
    page: Page,
    selector: str,
    *,
    equals: str | None = None,
    differs: str | None = None,
    timeout: float = 30_000,
) -> str:
    """Waits until the text of `selector` equals, or differs from, a value (the page updates
    itself by polling); returns the text."""
    page.wait_for_function(
        """([selector, equals, differs]) => {
          const text = document.querySelector(selector)?.textContent;
          return text !== undefined && (equals === null || text === equals)
            && (differs === null || text !== differs);
        }""",
        arg=[selector, equals, differs],
        timeout=timeout,
    )
    return page.inner_text(selector)


def screenshot(page: Page, name: str) -> None:
    """With JANUS_CONSOLE_SCREENSHOTS set: `<name>-light.png` and `<name>-dark.png` there
    (256 colours: small enough to commit)."""
    if not SCREENSHOTS:
        return
    Path(SCREENSHOTS).mkdir(parents=True, exist_ok=True)
    page.mouse.move(0, 0)  # no hover effect on what the pointer last clicked
    for scheme in ("light", "dark"):
        page.emulate_media(color_scheme=scheme)
        page.wait_for_timeout(150)
        path = Path(SCREENSHOTS) / f"{name}-{scheme}.png"
        page.screenshot(path=str(path))
        Image.open(path).convert("RGB").quantize(256).save(path, optimize=True)
    page.emulate_media(color_scheme="light")
