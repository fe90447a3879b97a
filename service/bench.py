"""`janus bench serve`: a running service's throughput and latency, and ONNX Runtime vs torch.

Part 1 sends `--requests` classify requests (one example image each) at each concurrency level
from as many client threads, and reports requests/s and p50/p99 latency. Part 2 loads one version
(default: the serving one) from the store twice in this process, under ONNX Runtime and under torch
eager, and times the same batches on both (one intra-op thread each); the ratio is torch / ONNX.
Results go to `<out>/results.json` and `<out>/results.md`.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from service.client import auth_headers, default_url, raise_for

IMAGES = Path(__file__).resolve().parents[1] / "examples" / "images"


def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


def load_level(url: str, images: list[bytes], concurrency: int, requests: int) -> dict[str, Any]:
    """`requests` classify calls from `concurrency` threads; latency in ms."""
    latencies: list[float] = []
    errors: list[str] = []
    counter = iter(range(requests))
    lock = threading.Lock()

    def client() -> None:
        with httpx.Client(base_url=url, timeout=60, headers=auth_headers()) as http:
            while True:
                with lock:
                    i = next(counter, None)
                if i is None:
                    return
                start = time.perf_counter()
                files = [("images", ("q.png", images[i % len(images)], "image/png"))]
                r = http.post("/classify", files=files)
                elapsed = (time.perf_counter() - start) * 1000
                if r.status_code == 200:
                    latencies.append(elapsed)
                else:
                    errors.append(f"{r.status_code}: {r.text[:200]}")

    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    return {
        "concurrency": concurrency,
        "requests": requests,
        "errors": len(errors),
        "throughput_rps": len(latencies) / wall,
        "p50_ms": _percentile(latencies, 50),
        "p99_ms": _percentile(latencies, 99),
    }


def engine_ratio(version: str | None, batch: int, repeats: int = 20) -> dict[str, Any]:
    """Mean time per batch of ONNX Runtime and torch eager on the same version (this process)."""
    from adapters_store import open_store
    from learner.jobs.settings import JobSettings
    from service.runtime import load_version

    store = open_store(JobSettings.from_env().store_uri, create=False, clean=False)
    version = version or store.serving()
    if version is None:
        raise ValueError("no serving version; pass --version or learn one first (`janus up`)")
    out: dict[str, Any] = {"version": version, "batch": batch, "threads": 1}
    for engine in ("onnx", "torch"):
        model = load_version(store, version, engine=engine, threads=1)  # type: ignore[arg-type]
        x = np.random.default_rng(0).standard_normal((batch, 3, model.size, model.size))
        x = x.astype(np.float32)
        model.logits(x)  # warm
        start = time.perf_counter()
        for _ in range(repeats):
            model.logits(x)
        out[f"{engine}_ms_per_batch"] = (time.perf_counter() - start) / repeats * 1000
        out["input_size"] = model.size
    out["torch_over_onnx"] = out["torch_ms_per_batch"] / out["onnx_ms_per_batch"]
    return out


def markdown(results: dict[str, Any]) -> str:
    lines = [
        f"Service at {results['url']}, serving {results['serving']}.",
        "",
        "| concurrency | requests | errors | throughput (req/s) | p50 (ms) | p99 (ms) |",
        "|---|---|---|---|---|---|",
    ]
    for r in results["levels"]:
        lines.append(
            f"| {r['concurrency']} | {r['requests']} | {r['errors']} | "
            f"{r['throughput_rps']:.1f} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} |"
        )
    e = results.get("engines")
    if e:
        lines += [
            "",
            f"Engines on {e['version']} (batch {e['batch']}, {e['input_size']} px, 1 thread): "
            f"ONNX Runtime {e['onnx_ms_per_batch']:.1f} ms, torch eager "
            f"{e['torch_ms_per_batch']:.1f} ms per batch; torch / ONNX = "
            f"{e['torch_over_onnx']:.2f}.",
        ]
    return "\n".join(lines) + "\n"


def run_bench(args: argparse.Namespace) -> int:
    url = args.url or default_url()
    images = [p.read_bytes() for p in sorted(IMAGES.glob("*.png"))]
    ready = httpx.get(f"{url}/readyz", timeout=10)
    raise_for(ready)
    levels = [int(c) for c in str(args.concurrency).split(",") if c.strip()]
    results: dict[str, Any] = {"url": url, "serving": ready.json().get("version"), "levels": []}
    for c in levels:
        load_level(url, images, c, min(args.requests, 4 * c))  # warm every worker
        results["levels"].append(load_level(url, images, c, args.requests))
        print(json.dumps(results["levels"][-1]))
    results["engines"] = engine_ratio(args.version or results["serving"], args.batch)
    print(json.dumps(results["engines"]))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2))
    (out / "results.md").write_text(markdown(results))
    print(markdown(results))
    print(f"wrote {out / 'results.json'} and {out / 'results.md'}")
    return 0
