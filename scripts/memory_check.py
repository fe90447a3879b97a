"""Peak memory of learning one task over a folder of JPEGs, streamed (learn jobs) or held.

    python scripts/memory_check.py --images 5000 20000          # (= make memory-check)

For each size, writes that many 256 × 256 JPEGs into class folders (10 classes) under --root,
then, in a fresh process, runs what a learn job runs on them: `open_batch` (header checks), the
data digest, a stratified hold-out, `learn_task` at the model's side (the default 224 px) with
its reader processes, and the held-out evaluation. It samples the resident memory of that process
and of its reader processes every 50 ms and prints the peaks: the trainer alone, and the whole
process tree (readers' pages shared with the trainer counted twice, so an upper bound).
`--held` loads the batch into memory first instead (`load_batch`: what learn jobs did before
streaming), for comparison. The backbone is the tiny `test_efficientnet` at 224 px by default, so
the figures are the data path's and the run fits a laptop; `--backbone` changes it.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = 10
SIDE = 256


def write_jpegs(root: Path, count: int) -> Path:
    """`count` 256 × 256 JPEGs in 10 class folders (smooth noise, about 20 KB each)."""
    folder = root / f"jpegs-{count}"
    done = folder / ".complete"
    if done.exists():
        return folder
    rng = np.random.default_rng(count)
    for i in range(count):
        cls = folder / f"class{i % CLASSES}"
        cls.mkdir(parents=True, exist_ok=True)
        coarse = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
        im = Image.fromarray(coarse).resize((SIDE, SIDE), Image.Resampling.BICUBIC)
        im.save(cls / f"{i:06d}.jpg", quality=90)
    done.touch()
    return folder


def _learn(folder: Path, held: bool, backbone: str, workers: int | None) -> dict[str, float]:
    """The learn job's data path and training, in this process."""
    from learner.config import BackboneConfig, LoRAConfig, TrainConfig
    from learner.data import holdout_split, load_batch, open_batch
    from learner.state import LearnerState
    from learner.train import evaluate, learn_task

    lora = LoRAConfig(rank=4, alpha=4)
    state = LearnerState(BackboneConfig(name=backbone, weights="none", input_size=224), lora)
    cfg = TrainConfig(epochs=1, batch_size=64, lora=lora)
    t0 = time.perf_counter()
    if held:
        batch = load_batch(folder, image_size=224)
        digest = batch.digest()
        train, holdout = holdout_split(batch, 0.1, seed=0)
        result = learn_task(state, train, cfg, workers=0)
        acc = evaluate(result.model, holdout, result.state.class_names)
    else:
        with open_batch(folder, image_size=224) as batch:
            digest = batch.digest()
            train, holdout = holdout_split(batch, 0.1, seed=0)
            result = learn_task(state, train, cfg, workers=workers)
            acc = evaluate(result.model, holdout, result.state.class_names, workers=workers or 0)
    return {"seconds": time.perf_counter() - t0, "holdout_acc": acc, "digest": digest[:12]}


def _measure(folder: Path, held: bool, backbone: str, workers: int | None) -> dict[str, float]:
    """Runs `_learn` in a child process and samples its memory (and its children's)."""
    import psutil

    cmd = [sys.executable, __file__, "--child", str(folder), "--backbone", backbone]
    cmd += ["--held"] if held else []
    cmd += [] if workers is None else ["--workers", str(workers)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    peak_main = peak_tree = 0
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak_main, peak_tree
        root = psutil.Process(proc.pid)
        while not stop.is_set():
            try:
                main = root.memory_info().rss
                tree = main + sum(c.memory_info().rss for c in root.children(recursive=True))
            except psutil.Error:
                break
            peak_main, peak_tree = max(peak_main, main), max(peak_tree, tree)
            time.sleep(0.05)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    out, _ = proc.communicate()
    stop.set()
    thread.join()
    if proc.returncode:
        raise SystemExit(f"the learn run failed (exit {proc.returncode})")
    return {
        **json.loads(out.strip().splitlines()[-1]),
        "peak_main": peak_main,
        "peak_tree": peak_tree,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, nargs="+", default=[5000, 20000])
    parser.add_argument("--root", type=Path, default=Path("runs/memory-check"))
    parser.add_argument("--held", action="store_true", help="hold the batch in memory (before)")
    parser.add_argument("--backbone", default="test_efficientnet")
    parser.add_argument("--workers", type=int, default=None, help="reader processes")
    parser.add_argument("--child", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        print(json.dumps(_learn(args.child, args.held, args.backbone, args.workers)))
        return
    mode = "held in memory" if args.held else "streamed"
    print(f"| images ({mode}) | trainer peak RSS | process tree peak RSS | seconds | holdout acc |")
    print("|---:|---:|---:|---:|---:|")
    for count in args.images:
        folder = write_jpegs(args.root, count)
        r = _measure(folder, args.held, args.backbone, args.workers)
        gib = 1 << 30
        print(
            f"| {count} | {r['peak_main'] / gib:.2f} GiB | {r['peak_tree'] / gib:.2f} GiB "
            f"| {r['seconds']:.0f} | {r['holdout_acc']:.1f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
