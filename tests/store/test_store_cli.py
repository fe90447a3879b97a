"""`janus versions | activate | rollback | history | verify`, parsed as the service will."""

from __future__ import annotations

import json

import pytest
from store_helpers import publish, raw_fs

from adapters_store import cli, open_store


def janus(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """Runs the commands as `service/cli.py` will: its own parser, our `register`."""
    parser = cli.Parser(prog="janus")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("serve")  # the service's own commands live alongside ours
    cli.register(sub)
    args = parser.parse_args(list(argv))
    code = args.func(args)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def three(store_uri: str) -> str:
    store = open_store(store_uri)
    first = publish(store, activate=True)
    second = publish(
        store,
        seed=1,
        parent=first.id,
        task_index=1,
        classes=["cat", "dog", "eel"],
        new_classes=["eel"],
        metrics={"accuracy": 0.91},
    )
    publish(store, seed=2, parent=second.id, task_index=2, metrics={})
    return store_uri


def test_versions_table_and_json(capsys: pytest.CaptureFixture[str], three: str) -> None:
    code, out, _ = janus(capsys, "versions", "--store", three)
    assert code == 0
    header, *rows = out.splitlines()
    assert header.split() == [
        "ID",
        "PARENT",
        "CREATED",
        "CLASSES",
        "ADDED",
        "ACCURACY",
        "OLD",
        "Δ",
        "STATUS",
    ]
    assert rows[0].split()[0] == "v0001" and rows[0].rstrip().endswith("serving")
    assert "eel" in rows[1] and "0.91" in rows[1].split() and rows[1].split()[1] == "v0001"
    assert rows[2].split()[-2:] == ["-", "-"]  # no accuracy, no evaluation, not serving

    code, out, _ = janus(capsys, "versions", "--json", "--store", three)
    listed = json.loads(out)
    assert [(v["id"], v["serving"]) for v in listed] == [
        ("v0001", True),
        ("v0002", False),
        ("v0003", False),
    ]


def test_versions_show(capsys: pytest.CaptureFixture[str], three: str) -> None:
    code, out, _ = janus(capsys, "versions", "--store", three, "show", "v0003")
    assert code == 0 and "v0003 <- v0002 <- v0001" in out and "adapter.safetensors" in out
    code, out, _ = janus(capsys, "versions", "show", "v0002", "--json", "--store", three)
    shown = json.loads(out)
    assert shown["manifest"]["new_classes"] == ["eel"] and shown["lineage"] == ["v0002", "v0001"]


def test_activate_rollback_history(capsys: pytest.CaptureFixture[str], three: str) -> None:
    code, out, _ = janus(
        capsys, "activate", "v0003", "--actor", "ops", "--reason", "ship it", "--store", three
    )
    assert code == 0 and "serving v0003 (was v0001)" in out
    code, out, _ = janus(capsys, "rollback", "--json", "--reason", "regression", "--store", three)
    entry = json.loads(out)
    assert (entry["from"], entry["to"], entry["action"]) == ("v0003", "v0001", "rollback")
    code, out, _ = janus(capsys, "rollback", "--to", "v0002", "--store", three)
    assert code == 0 and out == "serving v0002 (was v0001); recorded for " + entry["actor"] + "\n"
    assert open_store(three).serving() == "v0002"
    code, out, _ = janus(capsys, "activate", "v0003", "--json", "--store", three)
    assert json.loads(out)["from"] == "v0002"  # the audit log's field name, not `from_`

    code, out, _ = janus(capsys, "history", "--store", three)
    lines = out.splitlines()
    assert len(lines) == 6 and lines[0].split() == [
        "TIME",
        "ACTION",
        "FROM",
        "TO",
        "ACTOR",
        "REASON",
    ]
    assert "ship it" in lines[2] and "ops" in lines[2]
    code, out, _ = janus(capsys, "history", "--json", "--store", three)
    assert [e["to"] for e in json.loads(out)] == ["v0001", "v0003", "v0001", "v0002", "v0003"]


def test_verify_exit_codes(capsys: pytest.CaptureFixture[str], three: str) -> None:
    code, out, _ = janus(capsys, "verify", "--store", three)
    assert code == 0 and "3 version(s) checked" in out
    fs, root = raw_fs(three)
    path = f"{root}/versions/v0002/head.safetensors"
    fs.pipe_file(path, fs.cat_file(path)[:-1] + b"\x00")
    code, out, _ = janus(capsys, "verify", "--store", three)
    assert code == 1 and "v0002/head.safetensors" in out and "janus rollback" in out
    code, out, _ = janus(capsys, "verify", "--json", "--store", three)
    assert json.loads(out)["problems"][0]["file"] == "head.safetensors"


def test_user_errors_say_what_to_do(
    capsys: pytest.CaptureFixture[str], three: str, tmp_path: object
) -> None:
    code, _, err = janus(capsys, "activate", "v0042", "--store", three)
    assert code == 1 and "janus versions" in err
    code, _, err = janus(capsys, "activate", "../v0001", "--store", three)
    assert code == 1 and "invalid version id" in err
    code, _, err = janus(capsys, "versions", "--store", f"{tmp_path}/nowhere")
    assert code == 1 and "JANUS_STORE" in err


def test_store_defaults_to_the_environment(
    capsys: pytest.CaptureFixture[str], three: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("JANUS_STORE", three)
    code, out, _ = janus(capsys, "versions")
    assert code == 0 and "v0003" in out


def test_main_helper_and_empty_store(capsys: pytest.CaptureFixture[str], store_uri: str) -> None:
    open_store(store_uri)
    assert cli.main(["versions", "--store", store_uri]) == 0
    assert "no versions" in capsys.readouterr().out
    assert cli.main(["history", "--store", store_uri]) == 0
    assert "janus activate" in capsys.readouterr().out
    assert cli.main(["clean-staging", "--store", store_uri]) == 0


def test_a_corrupt_version_is_flagged_not_hidden(
    capsys: pytest.CaptureFixture[str], three: str
) -> None:
    fs, root = raw_fs(three)
    path = f"{root}/versions/v0002/manifest.json"
    fs.pipe_file(path, fs.cat_file(path).replace(b"eel", b"emu"))
    code, out, _ = janus(capsys, "versions", "--store", three)
    assert code == 1 and "CORRUPT" in out and "v0003" in out
    code, out, _ = janus(capsys, "activate", "v0003", "--store", three)
    assert code == 0  # other versions stay usable


def test_clean_staging_says_when_there_is_nothing_and_prints_json(
    capsys: pytest.CaptureFixture[str], three: str
) -> None:
    code, out, _ = janus(capsys, "clean-staging", "--store", three)
    assert code == 0 and out.startswith("no abandoned publishes in ")
    code, out, _ = janus(capsys, "clean-staging", "--json", "--store", three)
    assert code == 0 and json.loads(out) == []


def test_help_shows_defaults_and_leaves_out_absent_ones(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        janus(capsys, "activate", "--help")
    text = " ".join(capsys.readouterr().out.split())
    assert "why, recorded in the audit log --store" in text  # `--reason ""`: no "(default: )"
    assert "(default: user@host)" in text and "(default: None)" not in text
    assert "(default: False)" not in text
