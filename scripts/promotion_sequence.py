"""A learn sequence through `janus up`, and what the promotion gate decided at each step.

    python scripts/promotion_sequence.py [--data-dir DIR] [--port 3100] [--per-class 100]

Starts `janus up` on a fresh data folder (it learns v0001 from examples/fashion-mnist/task1:
t-shirt_top, trouser, sneaker, bag), attaches a golden evaluation set (20 test-split images of
each Fashion-MNIST class), then sends learn jobs through the HTTP API, each with its default
activation (the gate):

    task2        dress, sandal        examples/fashion-mnist/task2 (40 each)
    task3        pullover, coat       Fashion-MNIST training split (--per-class each)
    destructive  shirt, ankle_boot    seq-lora, step 0.05, 3 epochs: meant to forget
    task4        shirt, ankle_boot    janus (the default)
    new-root     pullover, coat       parent root: a new lineage that knows none of the serving
                                      classes

and prints, per version, the new- and old-class accuracy of its evaluation against the version
serving at the time, the gate's decision and what serves after it. Then a pinned request and a
short shadow of the rejected version. Writes runs/promotion/results.{json,md}. Needs the Debian
package dataset-fashion-mnist.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from learner.data import (  # noqa: E402
    FASHION_MNIST_CLASSES,
    load_fashion_mnist,
    write_class_folders,
)
from service.process_group import spawn_group, stop_group  # noqa: E402


def _tar(folder: Path) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        tf.add(folder, arcname=folder.name)
    return buf.getvalue()


def _subset(split: str, classes: list[str], per_class: int, seed: int, out: Path) -> Path:
    data = load_fashion_mnist(split=split).select_classes(classes)  # type: ignore[arg-type]
    rng = np.random.default_rng(seed)
    keep = np.concatenate(
        [rng.permutation(np.nonzero(data.labels == c)[0])[:per_class] for c in range(len(classes))]
    )
    return write_class_folders(data.subset(np.sort(keep)), out)


class Api:
    def __init__(self, url: str, token: str) -> None:
        self.url, self.headers = url, {"Authorization": f"Bearer {token}"}

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        r = httpx.request(method, f"{self.url}{path}", headers=self.headers, timeout=600, **kwargs)
        if r.status_code >= 400:
            raise RuntimeError(f"{method} {path} → {r.status_code}: {r.text}")
        return r.json()

    def learn(self, folder: Path, **fields: Any) -> dict[str, Any]:
        files = {"dataset": (f"{folder.name}.tar.gz", _tar(folder))}
        job = self.call("POST", "/admin/learn", files=files, data={"request": json.dumps(fields)})
        while True:
            status = self.call("GET", f"/admin/jobs/{job['job_id']}")
            if status["state"] in ("succeeded", "failed", "cancelled"):
                if status["state"] != "succeeded":
                    raise RuntimeError(f"job {job['job_id']} {status['state']}: {status['error']}")
                return dict(status["result"])
            time.sleep(1.0)


def _wait_ready(url: str, process: Any, log: Path, timeout: float = 900) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"janus up exited:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1.0)
    raise TimeoutError(f"janus up not ready after {timeout} s:\n{log.read_text()[-3000:]}")


def _row(name: str, result: dict[str, Any], serving: str, took: float) -> dict[str, Any]:
    e = result["evaluation"] or {}
    return {
        "job": name,
        "version": result["version"],
        "classes": result["classes"],
        "against": e.get("against"),
        "new_accuracy": e.get("new_accuracy"),
        "holdout_accuracy_new": result["metrics"].get("holdout_accuracy_new"),
        "old_accuracy": e.get("old_accuracy"),
        "old_accuracy_serving": e.get("old_accuracy_serving"),
        "old_drop": e.get("old_drop"),
        "forgetting": e.get("forgetting"),
        "decision": "activated"
        if result["activated"]
        else "rejected"
        if result["rejected"]
        else "-",
        "reason": result["rejected"] or "",
        "serving_after": serving,
        "seconds": round(took, 1),
    }


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _markdown(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| job | version | classes added | against | new (hold-out) | new (eval) | old "
        "| old, serving version | drop (points) | forgetting (points) | gate | serving after |",
        "|---|---|---|---|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['job']} | {r['version']} | {', '.join(r['classes'])} | {r['against'] or '-'} "
            f"| {_pct(r['holdout_accuracy_new'])} | {_pct(r['new_accuracy'])} "
            f"| {_pct(r['old_accuracy'])} | {_pct(r['old_accuracy_serving'])} "
            f"| {_pct(r['old_drop'])} | {_pct(r['forgetting'])} | {r['decision']} "
            f"| {r['serving_after']} |"
        )
    reasons = [f"- {r['version']}: {r['reason']}" for r in rows if r["reason"]]
    return "\n".join(lines + (["", *reasons] if reasons else [])) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", default=None, help="default: a new temporary folder")
    parser.add_argument("--port", type=int, default=3100)
    parser.add_argument("--per-class", type=int, default=100, help="training images per class")
    parser.add_argument("--out", default=str(REPO / "runs" / "promotion"))
    args = parser.parse_args()
    data_dir = Path(args.data_dir or tempfile.mkdtemp(prefix="janus-promotion-"))
    work = data_dir / "tasks"
    work.mkdir(parents=True, exist_ok=True)
    log = data_dir / "up.log"
    cmd = [sys.executable, "-m", "service.cli", "up", "--data-dir", str(data_dir)]
    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith("JANUS_")}
    up = spawn_group([*cmd, "--port", str(args.port)], env, log, REPO)
    url = f"http://127.0.0.1:{args.port}"
    rows: list[dict[str, Any]] = []
    try:
        _wait_ready(url, up, log)
        api = Api(url, (data_dir / "admin-token").read_text().strip())
        first = next(v for v in api.call("GET", "/admin/versions") if v["serving"])
        rows.append(
            _row(
                "task1 (janus up)",
                {
                    **first,
                    "version": first["id"],
                    "classes": first["new_classes"],
                    "activated": True,
                    "rejected": None,
                    "evaluation": {
                        "against": None,
                        "new_accuracy": (first["evaluation"] or {}).get("new_accuracy"),
                    },
                },
                first["id"],
                0.0,
            )
        )
        classes = list(FASHION_MNIST_CLASSES)
        golden = _subset("test", classes, 20, 0, work / "golden")
        files = {"dataset": ("golden.tar.gz", _tar(golden))}
        info = api.call("POST", "/admin/evalsets", files=files)
        print(f"golden set {info['digest'][:12]}: {sum(info['classes'].values())} images")

        task3 = _subset("train", ["pullover", "coat"], args.per_class, 1, work / "task3")
        task4 = _subset("train", ["shirt", "ankle_boot"], args.per_class, 2, work / "task4")
        jobs: list[tuple[str, Path, dict[str, Any]]] = [
            ("task2", REPO / "examples" / "fashion-mnist" / "task2", {}),
            ("task3", task3, {}),
            (
                "destructive",
                task4,
                {
                    "method": "seq-lora",
                    "train": {"lr": 0.05, "epochs": 3},
                    "reason": "seq-lora, large step",
                },
            ),
            ("task4", task4, {}),
            ("new-root", task3, {"parent": "root", "reason": "a new lineage"}),
        ]
        for name, folder, fields in jobs:
            start = time.monotonic()
            result = api.learn(folder, **fields)
            serving = next(v["id"] for v in api.call("GET", "/admin/versions") if v["serving"])
            rows.append(_row(name, result, serving, time.monotonic() - start))
            print(json.dumps(rows[-1]), flush=True)

        # a pinned request, and a short shadow of the rejected destructive version
        rejected = next(r["version"] for r in rows if r["job"] == "destructive")
        image = (REPO / "examples" / "images" / "sneaker.png").read_bytes()
        pinned = httpx.post(
            f"{url}/classify",
            params={"version": "v0001"},
            files=[("images", ("s.png", image))],
            timeout=60,
        ).json()
        api.call("PUT", "/admin/shadow", json={"version": rejected, "fraction": 1.0})
        time.sleep(3)
        probe = _subset("test", classes, 5, 3, work / "probe")
        sent = 0
        for path in sorted(probe.rglob("*.png")):
            httpx.post(
                f"{url}/classify", files=[("images", (path.name, path.read_bytes()))], timeout=60
            )
            sent += 1
        time.sleep(3)
        shadow = api.call("GET", "/admin/shadow")
        api.call("DELETE", "/admin/shadow")
        summary = {
            "rows": rows,
            "pinned": {"asked": "v0001", "answered": pinned["version"]},
            "shadow": {"version": rejected, "requests": sent, "counts": shadow["counts"]},
            "history": api.call("GET", "/admin/history"),
        }
    finally:
        stop_group(up, timeout=60, linger_s=10)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(summary, indent=2))
    table = _markdown(rows)
    (out / "results.md").write_text(table)
    print(table)
    print(f"pinned request: {summary['pinned']}")
    print(f"shadow of {rejected}: {json.dumps(summary['shadow']['counts'])}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
