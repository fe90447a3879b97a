"""The `janus` command line as a user meets it: help, version, exit codes, one-line errors,
a closed pipe, `janus settings`, and `--url` commands printing what the local ones print.

Processes run `python -m service.cli` with a temporary `JANUS_DATA_DIR` and `JANUS_STORE`, so
nothing touches the real home; nothing here needs Redis, a worker or `bentoml serve`.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from importlib.metadata import version
from pathlib import Path

import pytest

from adapters_store import open_store
from adapters_store.cli import HelpFormatter
from learner.data import LabeledBatch
from learner.jobs import cli as jobs_cli
from learner.jobs.cli import print_cancelled, print_jobs, print_learned
from learner.jobs.client import JobStatus
from learner.jobs.redis_embedded import RedisUnavailable
from service import client, commands, envdoc, remote
from service.cli import build_parser, main
from tests.service.conftest import ADMIN, Api, make_api, png

REPO = Path(__file__).resolve().parents[2]
UNREACHABLE = "127.0.0.1:1"  # nothing listens on port 1: connection refused at once


@pytest.fixture
def home(tmp_path: Path) -> dict[str, str]:
    """`JANUS_*` of a fresh data dir with an empty store."""
    open_store(tmp_path / "store")
    return {"JANUS_DATA_DIR": str(tmp_path / "data"), "JANUS_STORE": str(tmp_path / "store")}


def janus(home: dict[str, str], *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("JANUS_")}
    return subprocess.run(
        [sys.executable, "-m", "service.cli", *args],
        cwd=REPO,
        env={**clean, **home, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def one_error_line(done: subprocess.CompletedProcess[str]) -> str:
    """The failure's message: exit 1, one `janus: error:` line, no traceback."""
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert "Traceback" not in done.stderr, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("janus: error: ")]
    assert len(errors) == 1, done.stderr
    return errors[0]


# --- version, help, usage ------------------------------------------------------------------------


def test_version_prints_the_installed_package_version(home: dict[str, str]) -> None:
    done = janus(home, "--version")
    assert done.returncode == 0 and done.stdout == f"janus {version('janus-serve')}\n"


def _parsers(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _parsers(sub, (*path, name))


def _has_default(action: argparse.Action) -> bool:
    default = action.default
    if default is None or default is False or default is argparse.SUPPRESS:
        return False
    return not (isinstance(default, str | list) and not default)


def test_every_command_explains_every_option_and_shows_its_default(
    capsys: pytest.CaptureFixture[str],
) -> None:
    walked = dict(_parsers(build_parser()))
    nested = {("versions", "show"), ("bench", "cl"), ("bench", "step"), ("bench", "serve")}
    assert nested | {("settings",), ("learn",), ("worker",), ("classify",)} <= set(walked)
    for path, parser in walked.items():
        assert parser.formatter_class is HelpFormatter, path
        text = " ".join(parser.format_help().split())
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction | argparse._VersionAction):
                continue
            if isinstance(action, argparse._SubParsersAction):
                listed = {a.dest: a.help for a in action._choices_actions}
                assert listed.keys() == action.choices.keys() and all(listed.values()), path
                continue
            assert action.help, f"janus {' '.join(path)}: {action.option_strings or action.dest}"
            if _has_default(action):
                assert f"(default: {action.default})" in text, (path, action.dest)
        assert main([*path, "--help"]) == 0
        assert capsys.readouterr().out.startswith(f"usage: janus {' '.join(path)}".rstrip())


def test_help_names_the_methods_and_the_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "exit codes: 0 success 1 failure" in text and "2 usage error" in text
    assert main(["learn", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert (
        "janus, inflora, lora-gpm, lora-gpm-proj" in text
        and "(default: janus)" in text
        and "design_samples" in text
    )


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["versions", "--bogus"],
        ["learn", "data", "--method", "nope"],
        ["bench", "step", "--methods", "frozen"],
        ["settings", "--json", "--markdown"],
        ["worker", "--loglevel", "LOUD"],
    ],
)
def test_a_usage_error_exits_2(home: dict[str, str], args: list[str]) -> None:
    done = janus(home, *args)
    assert done.returncode == 2 and done.stderr.startswith("usage: janus"), done.stderr
    assert "Traceback" not in done.stderr


# --- one-line errors, exit 1 ---------------------------------------------------------------------


@pytest.mark.parametrize("args", [["jobs"], ["jobs", "job-1", "--json"], ["cancel", "job-1"]])
def test_an_unreachable_redis_is_one_line_naming_it_without_its_password(
    home: dict[str, str], args: list[str]
) -> None:
    done = janus(home, *args, JANUS_REDIS_URL=f"redis://:hunter2@{UNREACHABLE}/0")
    message = one_error_line(done)
    assert done.stderr.strip() == message
    assert f"redis://:***@{UNREACHABLE}/0" in message and "hunter2" not in done.stderr
    assert "JANUS_REDIS_URL" in message and "janus up" in message


def test_learn_with_an_unreachable_redis_fails_in_one_line(
    home: dict[str, str], tmp_path: Path
) -> None:
    (tmp_path / "batch" / "cat").mkdir(parents=True)
    (tmp_path / "batch" / "cat" / "a.png").write_bytes(b"not read here")
    done = janus(home, "learn", str(tmp_path / "batch"), JANUS_REDIS_URL=f"redis://{UNREACHABLE}/0")
    assert f"cannot reach Redis at redis://{UNREACHABLE}/0" in one_error_line(done)


def test_an_embedded_redis_that_cannot_start_is_one_line(
    home: dict[str, str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def no_redis(settings: object) -> None:
        raise RedisUnavailable("no redis-server in this virtualenv;\npoint JANUS_REDIS_URL at one")

    for name, value in home.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(jobs_cli, "resolve_redis", no_redis)
    for command in (["jobs"], ["worker"], ["cancel", "job-1"]):
        assert main(command) == 1
        assert capsys.readouterr().err == (
            "janus: error: no redis-server in this virtualenv; point JANUS_REDIS_URL at one\n"
        )


@pytest.mark.parametrize(
    ("args", "env"),
    [
        (["versions", "--url", f"http://{UNREACHABLE}", "--token", "t"], {}),
        (["history", "--json", "--url", f"http://{UNREACHABLE}", "--token", "t"], {}),
        (["jobs", "--url", f"http://{UNREACHABLE}", "--token", "t"], {}),
        (["classify", "README.md"], {"JANUS_URL": f"http://{UNREACHABLE}"}),
    ],
)
def test_an_unreachable_service_is_one_line(
    home: dict[str, str], args: list[str], env: dict[str, str]
) -> None:
    message = one_error_line(janus(home, *args, **env))
    assert f"cannot reach the service at http://{UNREACHABLE}" in message
    assert "janus up" in message


def test_a_missing_file_exits_1_before_anything_starts(home: dict[str, str]) -> None:
    assert "nope.png: No such file or directory" in one_error_line(
        janus(home, "classify", "nope.png", JANUS_URL=f"http://{UNREACHABLE}")
    )
    message = one_error_line(janus(home, "learn", "/no/such/dir"))
    assert "/no/such/dir: no such file or folder" in message
    assert not (Path(home["JANUS_DATA_DIR"]) / "redis").exists()  # no embedded Redis started


@pytest.mark.parametrize("args", [["versions"], ["settings"], ["settings", "--json"]])
def test_an_invalid_setting_is_one_line_naming_the_variable(
    home: dict[str, str], args: list[str]
) -> None:
    message = one_error_line(janus(home, *args, JANUS_STORE_WAIT_S="abc"))
    assert "invalid settings: JANUS_STORE_WAIT_S" in message and "janus settings" in message


@pytest.mark.parametrize("buffered", [True, False], ids=["buffered", "unbuffered"])
@pytest.mark.parametrize("args", [["versions", "--json"], ["history"], ["settings", "--json"]])
def test_a_reader_that_goes_away_leaves_no_traceback(
    home: dict[str, str], args: list[str], buffered: bool
) -> None:
    """`janus history | head -1`, with the reader gone before janus writes a byte.

    Buffered, the write fails when the output is flushed; unbuffered, in `print` itself.
    """
    clean = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("JANUS_") and k != "PYTHONUNBUFFERED"
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "service.cli", *args],
        cwd=REPO,
        env={**clean, **home, **({} if buffered else {"PYTHONUNBUFFERED": "1"})},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # the pipe's only reader: every write now fails with EPIPE
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 1
    assert err == "", err  # neither a traceback nor "Exception ignored … BrokenPipeError"


# --- janus settings ------------------------------------------------------------------------------


def test_settings_json_shows_the_environment_and_masks_secrets(home: dict[str, str]) -> None:
    done = janus(
        home,
        "settings",
        "--json",
        JANUS_STORE_WAIT_S="7",
        JANUS_ADMIN_TOKEN="a-secret-admin-token-0123",
        JANUS_REDIS_URL="redis://:hunter2@127.0.0.1:6390/0",
    )
    assert done.returncode == 0, done.stderr
    rows = {r["variable"]: r for r in json.loads(done.stdout)}
    assert set(rows) == {v.name for v in envdoc.variables()}
    assert rows["JANUS_STORE_WAIT_S"] == {
        "variable": "JANUS_STORE_WAIT_S",
        "value": "7",
        "source": "environment",
    }
    assert rows["JANUS_DATA_DIR"]["value"] == home["JANUS_DATA_DIR"]
    assert (rows["JANUS_QUEUE"]["value"], rows["JANUS_QUEUE"]["source"]) == (
        "janus-learn",
        "default",
    )
    assert rows["JANUS_ADMIN_TOKEN"]["value"] == "set"
    assert rows["JANUS_CLASSIFY_TOKEN"]["value"] == "unset"
    assert rows["JANUS_REDIS_URL"]["value"] == "redis://:***@127.0.0.1:6390/0"
    assert "a-secret" not in done.stdout and "hunter2" not in done.stdout


def test_settings_table_and_markdown(home: dict[str, str]) -> None:
    done = janus(home, "settings", JANUS_STORE_WAIT_S="7")
    header, *rows = done.stdout.splitlines()
    assert done.returncode == 0 and header.split() == ["VARIABLE", "VALUE", "FROM"]
    assert ["JANUS_STORE_WAIT_S", "7", "environment"] in [r.split() for r in rows]
    assert ["JANUS_QUEUE", "janus-learn", "default"] in [r.split() for r in rows]
    done = janus(home, "settings", "--markdown")
    assert done.returncode == 0 and done.stdout == envdoc.markdown_table()


# --- what the job commands print ----------------------------------------------------------------

DONE = JobStatus(
    job_id="job-a", state="succeeded", version="v0003", submitted_at="2024-05-01T12:00:00+00:00"
)
FAILED = JobStatus(job_id="job-b", state="failed", error="no images in cat/\nsecond line")
RUNNING = JobStatus(
    job_id="job-c",
    state="running",
    progress={"phase": "train", "epoch": 1, "epochs": 2, "step": 3, "steps": 10},
)


def test_jobs_print_as_a_table_unless_json(capsys: pytest.CaptureFixture[str]) -> None:
    print_jobs([DONE, FAILED, RUNNING], as_json=False)
    header, *rows = capsys.readouterr().out.splitlines()
    assert header.split()[:3] == ["JOB", "STATE", "SUBMITTED"]
    assert rows[0].split() == ["job-a", "succeeded", "2024-05-01", "12:00:00", "v0003"]
    assert "no images in cat/" in rows[1] and "second line" not in rows[1]
    assert "train epoch 1/2 step 3/10" in rows[2]
    print_jobs([DONE, FAILED], as_json=True)
    assert [j["job_id"] for j in json.loads(capsys.readouterr().out)] == ["job-a", "job-b"]
    print_jobs([], as_json=False)
    assert "janus learn" in capsys.readouterr().out


def test_learn_and_cancel_answers_and_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    assert print_learned(JobStatus(job_id="job-q", state="queued"), as_json=False) == 0
    assert capsys.readouterr().out == "job-q\n"  # the id alone: `id=$(janus learn …)`
    assert print_learned(DONE, as_json=False) == 0
    assert "version    v0003" in capsys.readouterr().out
    assert print_learned(FAILED, as_json=True) == 1
    assert json.loads(capsys.readouterr().out) == FAILED.summary()
    assert print_cancelled(RUNNING, as_json=False) == 0
    assert "cancel requested for job-c" in capsys.readouterr().out
    assert print_cancelled(DONE, as_json=True) == 1
    assert "already succeeded" in capsys.readouterr().err


# --- `--url`: the same output as the local commands ----------------------------------------------


@pytest.fixture
def service_api(
    version_store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Api]:
    """The real admin API in-process on a copy of the store; `--url` requests go to it."""
    store = tmp_path / "store"
    shutil.copytree(version_store, store)
    api = make_api(store)
    api.client.headers["Authorization"] = f"Bearer {ADMIN}"
    monkeypatch.setattr(remote, "_client", lambda args: contextlib.nullcontext(api.client))
    with api.client:
        yield api
    api.serving.stop()


@pytest.mark.parametrize(
    "command",
    [
        ["versions"],
        ["versions", "--json"],
        ["versions", "show", "v0003"],
        ["versions", "show", "v0002", "--json"],
        ["history"],
        ["history", "--json"],
    ],
)
def test_url_commands_print_what_the_local_commands_print(
    service_api: Api, capsys: pytest.CaptureFixture[str], command: list[str]
) -> None:
    assert main([*command, "--store", service_api.store.uri]) == 0
    local = capsys.readouterr().out
    assert main([*command, "--url", "http://testserver"]) == 0
    assert capsys.readouterr().out == local
    if "--json" in command:
        json.loads(local)
    else:
        with pytest.raises(json.JSONDecodeError):
            json.loads(local)


def test_url_serving_changes_print_a_line_unless_json(
    service_api: Api, capsys: pytest.CaptureFixture[str]
) -> None:
    url = ["--url", "http://testserver"]
    assert main(["activate", "v0003", "--actor", "ops", "--reason", "ship", *url]) == 0
    out = capsys.readouterr().out  # through the API, the token acted; "ops" is its claim
    assert out == "serving v0003 (was v0002); recorded for admin-token (says 'ops')\n"
    assert main(["rollback", "--json", *url]) == 0
    entry = json.loads(capsys.readouterr().out)
    assert (entry["from"], entry["to"], entry["action"]) == ("v0003", "v0002", "rollback")
    assert service_api.store.serving() == "v0002"
    assert main(["activate", "v0099", *url]) == 1
    assert "v0099" in capsys.readouterr().err


def test_classify_prints_labels_unless_json(
    service_api: Api,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    digits: LabeledBatch,
    tmp_path: Path,
) -> None:
    image = tmp_path / "two.png"
    image.write_bytes(png(digits.images[int((digits.labels == 2).nonzero()[0][0]), ..., 0]))
    monkeypatch.setattr(
        commands, "classify", functools.partial(client.classify, client=service_api.client)
    )
    assert main(["classify", "--url", "http://testserver", "--top-k", "2", str(image)]) == 0
    version_line, answer = capsys.readouterr().out.splitlines()
    assert version_line == "version v0002" and answer.startswith(f"{image}: digit")
    assert len(answer.split(", ")) == 2
    assert main(["classify", "--url", "http://testserver", "--json", str(image)]) == 0
    assert json.loads(capsys.readouterr().out)["version"] == "v0002"
