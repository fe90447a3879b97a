"""Does the LDA head's temperature make its probabilities honest? One method's task sequence.

    .venv/bin/python docs/bench-cl/calibration.py --method janus --preset quick --threads 2

After the last task, scores every task's test images with the served head (divided by the fitted
temperature T) and with the raw LDA logits (T = 1): accuracy, negative log-likelihood, expected
calibration error over 15 confidence bins, and the mean top probability.
"""

from __future__ import annotations

import argparse
from itertools import pairwise

import torch
import torch.nn.functional as F

from learner.bench import BenchConfig, _train_config, initial_state, load_split
from learner.inputs import to_uint8_tensor
from learner.train import learn_task, predict_logits


def _report(name: str, logits: torch.Tensor, targets: torch.Tensor, bins: int = 15) -> str:
    conf, pred = logits.softmax(dim=1).max(dim=1)
    correct = (pred == targets).double()
    ece = 0.0
    edges = torch.linspace(0, 1, bins + 1, dtype=torch.float64)
    for lo, hi in pairwise(edges):
        inside = (conf > lo) & (conf <= hi)
        if inside.any():
            gap = (correct[inside].mean() - conf[inside].mean()).abs()
            ece += float(inside.double().mean() * gap)
    nll = float(F.cross_entropy(logits, targets))
    return (
        f"{name:18s} accuracy {100 * correct.mean():6.2f}  NLL {nll:.3f}  "
        f"ECE {100 * ece:5.2f} %  mean top probability {conf.mean():.3f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", default="janus")
    parser.add_argument("--preset", default="quick")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cfg = BenchConfig(preset=args.preset, train_overrides={"num_threads": args.threads})
    tasks = load_split(cfg).test
    train_cfg = _train_config(cfg, args.method)
    state = initial_state(cfg)
    for task in tasks:
        result = learn_task(state, task.train, train_cfg)
        state = result.state
    temperature = result.metrics["head_temperature"]
    logits, targets, offset = [], [], 0
    for task in tasks:
        logits.append(predict_logits(result.model, to_uint8_tensor(task.test.images)))
        targets.append(torch.from_numpy(task.test.labels).long() + offset)
        offset += len(task.class_names)
    z, y = torch.cat(logits).double(), torch.cat(targets)
    print(f"{args.method}, preset {args.preset}: fitted temperature {temperature:.4g}")
    print(_report("served (÷ T)", z, y))
    print(_report("raw LDA (T = 1)", z * temperature, y))


if __name__ == "__main__":
    main()
