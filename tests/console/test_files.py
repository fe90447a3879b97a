"""The console's files as the service serves them (in-process, behind the service's `Guard`): the
page is public and carries a strict Content-Security-Policy; only the allowlisted files are
served; nothing in them reaches another origin, writes HTML from strings or evaluates code."""

from __future__ import annotations

import re

import pytest
from fastapi.testclient import TestClient

from service.api import create_api
from service.console import CSP, STATIC
from service.middleware import Guard

ADMIN = "console-files-admin-token"
SCRIPTS = sorted(STATIC.glob("*.js"))


@pytest.fixture(scope="module")
def client() -> TestClient:
    def no_serving() -> None:
        raise AssertionError("the console's routes need no Serving")

    app = Guard(
        create_api(no_serving),  # type: ignore[arg-type]
        limit=lambda _path: 1 << 20,
        probe=lambda: None,
        admin_tokens=lambda _method: [ADMIN],
    )
    return TestClient(app)


@pytest.mark.parametrize("path", ["/console", "/console/"])
def test_the_page_is_public_and_carries_a_strict_content_security_policy(
    client: TestClient, path: str
) -> None:
    r = client.get(path)  # no token: the shell is public, its data is not
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/html")
    assert r.headers["content-security-policy"] == CSP
    assert "script-src 'self'" in CSP and "connect-src 'self'" in CSP and "unsafe" not in CSP
    assert r.headers["x-content-type-options"] == "nosniff"
    assert r.headers["referrer-policy"] == "no-referrer"
    html = r.text
    scripts = re.findall(r"<script\b[^>]*>", html)
    assert scripts == ['<script type="module" src="/console/app.js">']  # no inline script
    assert not re.search(r"\son[a-z]+=", html)  # no inline handlers
    assert not re.search(r"\sstyle=", html)  # no inline styles either
    assert client.get("/admin/versions").status_code == 401  # the data stays behind the token


def test_only_the_consoles_own_files_are_served(client: TestClient) -> None:
    types = {".js": "text/javascript", ".css": "text/css", ".html": "text/html"}
    for path in STATIC.iterdir():
        r = client.get(f"/console/{path.name}")
        assert r.status_code == 200, path.name
        assert r.headers["content-type"].startswith(types[path.suffix])
        assert r.headers["content-security-policy"] == CSP
        assert r.content == path.read_bytes()
    for name in ["nope.js", "__init__.py", "..%2F__init__.py", "%2e%2e%2fapi.py", "static"]:
        assert client.get(f"/console/{name}").status_code == 404, name


def test_the_page_loads_only_files_that_exist_and_nothing_from_another_origin() -> None:
    names = {p.name for p in STATIC.iterdir()}
    html = (STATIC / "index.html").read_text()
    for ref in re.findall(r'(?:src|href)="([^"]+)"', html):
        assert ref.startswith(("/console/", "#", "data:")), ref
        if ref.startswith("/console/"):
            assert ref.removeprefix("/console/") in names, ref
    for path in [*SCRIPTS, STATIC / "console.css", STATIC / "index.html"]:
        text = path.read_text()
        urls = set(re.findall(r"https?://[^\s\"'`)]+", text)) - {"http://www.w3.org/2000/svg"}
        assert not urls, (path.name, urls)
        assert "@import" not in text and "url(" not in text, path.name
    for script in SCRIPTS:
        for spec in re.findall(r'from\s+"([^"]+)"', script.read_text()):
            assert spec.startswith("./") and spec.removeprefix("./") in names, (script.name, spec)


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_no_script_writes_html_from_strings_or_evaluates_code(script) -> None:
    text = script.read_text()
    for risky in [
        "innerHTML",
        "outerHTML",
        "insertAdjacentHTML",
        "document.write",
        "eval(",
        "new Function",
        'setAttribute("style"',
        "localStorage",
    ]:
        assert risky not in text, (script.name, risky)
