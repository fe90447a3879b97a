"""Throughput of the Open Inference Protocol's infer against `/classify`, on the same images, in
one run, rounds interleaved so both see the same machine state.

    python scripts/v2_throughput.py --url http://127.0.0.1:3000 [--batch 4] [--requests 200]
                                    [--concurrency 1,4] [--rounds 3]

Three clients per round and concurrency level, each sending the same `--batch` example images per
request: `/classify` (multipart, httpx), `/v2/models/janus/infer` with the binary data extension
(httpx: the same transport), and the same through `tritonclient`'s HTTP client. Prints requests/s
(median over rounds, and the range) and each one's ratio to `/classify`; writes
runs/v2-throughput/results.json.
"""

import argparse
import contextlib
import json
import statistics
import struct
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import tritonclient.http as triton

REPO = Path(__file__).resolve().parents[1]
IMAGES = sorted((REPO / "examples" / "images").glob("*.png"))


def _classify(url: str, images: list[bytes]) -> Callable[[], None]:
    http = httpx.Client(timeout=60)
    files = [("images", (f"{i}.png", b, "image/png")) for i, b in enumerate(images)]

    def call() -> None:
        r = http.post(f"{url}/classify", files=files, params={"top_k": 1})
        r.raise_for_status()

    return call


def _v2_httpx(url: str, images: list[bytes]) -> Callable[[], None]:
    http = httpx.Client(timeout=60)
    blob = b"".join(struct.pack("<I", len(b)) + b for b in images)
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "images",
                    "shape": [len(images)],
                    "datatype": "BYTES",
                    "parameters": {"binary_data_size": len(blob)},
                }
            ],
            "outputs": [{"name": "labels"}],
            "parameters": {"top_k": 1},
        }
    ).encode()

    def call() -> None:
        r = http.post(
            f"{url}/v2/models/janus/infer",
            content=header + blob,
            headers={"Inference-Header-Content-Length": str(len(header))},
        )
        r.raise_for_status()

    return call


def _v2_triton(url: str, images: list[bytes]) -> Callable[[], None]:
    client = triton.InferenceServerClient(url=url.removeprefix("http://"), network_timeout=60)
    tensor = triton.InferInput("images", [len(images)], "BYTES")
    tensor.set_data_from_numpy(np.array(images, dtype=np.object_), binary_data=True)
    outputs = [triton.InferRequestedOutput("labels", binary_data=False)]

    def call() -> None:
        client.infer("janus", [tensor], outputs=outputs, parameters={"top_k": 1})

    return call


CLIENTS = {"classify": _classify, "v2 (httpx)": _v2_httpx, "v2 (tritonclient)": _v2_triton}


def _rate(make: Callable[[], Callable[[], None]], requests: int, concurrency: int) -> float:
    """Requests/s of `concurrency` threads, each with its own client made and warmed in that
    thread (tritonclient's gevent client must stay in the thread that made it)."""
    share = requests // concurrency
    ready = threading.Barrier(concurrency + 1)
    failures: list[BaseException] = []

    def worker() -> None:
        try:
            call = make()
            call()  # warm: the connection and a first request
        except BaseException as err:
            failures.append(err)
            ready.abort()
            return
        ready.wait()
        try:
            for _ in range(share):
                call()
        except BaseException as err:
            failures.append(err)

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for t in threads:
        t.start()
    with contextlib.suppress(threading.BrokenBarrierError):  # a client failed: reported below
        ready.wait()
    start = time.perf_counter()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    if failures:
        raise RuntimeError(f"a client failed: {failures[0]!r}")
    return share * concurrency / elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:3000")
    parser.add_argument("--batch", type=int, default=4, help="images per request")
    parser.add_argument("--requests", type=int, default=200, help="per client, round and level")
    parser.add_argument("--concurrency", default="1,4")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", default=str(REPO / "runs" / "v2-throughput"))
    args = parser.parse_args()
    images = [p.read_bytes() for p in (IMAGES * args.batch)[: args.batch]]
    levels = [int(c) for c in args.concurrency.split(",")]
    rates: dict[str, dict[int, list[float]]] = {n: {c: [] for c in levels} for n in CLIENTS}
    for _ in range(args.rounds):
        for level in levels:
            for name, factory in CLIENTS.items():
                rate = _rate(lambda f=factory: f(args.url, images), args.requests, level)
                rates[name][level].append(rate)
    rows = []
    for level in levels:
        base = statistics.median(rates["classify"][level])
        for name in CLIENTS:
            got = rates[name][level]
            rows.append(
                {
                    "client": name,
                    "concurrency": level,
                    "requests_per_s": statistics.median(got),
                    "range": [min(got), max(got)],
                    "ratio_to_classify": statistics.median(got) / base,
                }
            )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({"batch": args.batch, "rows": rows}, indent=2))
    print(
        f"{args.batch} images per request, {args.requests} requests per round, {args.rounds} rounds"
    )
    print(f"{'client':<20} {'clients':>7} {'req/s':>8} {'range':>17} {'vs classify':>12}")
    for r in rows:
        lo, hi = r["range"]
        print(
            f"{r['client']:<20} {r['concurrency']:>7} {r['requests_per_s']:>8.1f} "
            f"{lo:>8.1f}–{hi:<8.1f} {r['ratio_to_classify']:>11.2f}×"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
