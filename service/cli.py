"""The `janus` command line: benchmarks, the demo run, and the version store's commands."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from tqdm import tqdm

from learner.methods import list_methods


def _progress_bars(enabled: bool):  # type: ignore[no-untyped-def]
    """on_task(method, t) → a progress callback drawing one tqdm bar per task."""
    from learner.train import Progress

    def on_task(method: str, t: int):  # type: ignore[no-untyped-def]
        if not enabled:
            return None
        bar = tqdm(desc=f"{method} task {t}", unit="step", leave=False, dynamic_ncols=True)

        def report(p: Progress) -> None:
            if p.phase == "train":
                bar.total = p.steps
                bar.set_postfix(loss=f"{p.loss:.3f}", img_s=f"{p.samples_per_s:.0f}")
                bar.update(p.step - bar.n)
            elif p.phase == "finalize":
                bar.close()

        return report

    return on_task


def _overrides(args: argparse.Namespace) -> dict[str, object]:
    """`--set KEY=VALUE` settings, plus `--threads`."""
    from learner.jobs.cli import parse_setting

    overrides = dict(parse_setting(item) for item in args.set)
    if args.threads:
        overrides["num_threads"] = args.threads
    return overrides


def _bench_cl(args: argparse.Namespace) -> int:
    from learner.bench import BenchConfig, run_benchmark
    from learner.metrics import markdown_table, matrix_markdown

    overrides = _overrides(args)
    if args.epochs:
        overrides["epochs"] = args.epochs
    cfg = BenchConfig(
        data=args.data,
        tasks=args.tasks,
        methods=tuple(m.strip() for m in args.methods.split(",") if m.strip()),
        preset="quick" if args.quick else "full",
        seed=args.seed,
        train_overrides=overrides,
    )
    if args.ablation:
        cfg = cfg.with_ablations()
    out = Path(args.out)
    results = run_benchmark(cfg, out, _progress_bars(not args.no_progress))
    print()
    print(markdown_table(results))
    for name, res in results["methods"].items():
        print(f"\n{name}: accuracy matrix (row t = after task t, column i = task i)")
        print(matrix_markdown(res["matrix"]))
    print(f"\nwrote {out / 'results.json'}, {out / 'results.md'} and plots")
    return 0


def _bench_step(args: argparse.Namespace) -> int:
    import json

    from learner.bench import BenchConfig, run_step_benchmark

    cfg = BenchConfig(
        data=args.data,
        methods=tuple(m.strip() for m in args.methods.split(",") if m.strip()),
        preset="full" if args.full else "quick",
        seed=args.seed,
        train_overrides=_overrides(args),
    )
    results = run_step_benchmark(cfg, rounds=args.rounds, baseline=args.baseline)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "step.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"\n| method | step ms (median of {args.rounds}) | step / {args.baseline} |")
    print("|---|---:|---:|")
    for name, res in results["methods"].items():
        print(f"| {name} | {1000 * res['step_s']:.0f} | {res['ratio']:.2f} |")
    print(f"\nwrote {out / 'step.json'}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    """The main job until the service exists: a short class-incremental run."""
    args.methods, args.quick, args.ablation, args.epochs, args.set = "janus", True, False, None, []
    return _bench_cl(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="janus", description="Continual-learning image classification with Janus-LoRA"
    )
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="a short class-incremental run on Fashion-MNIST (offline)")
    demo.add_argument("--data", default="fashion-mnist")
    demo.add_argument("--tasks", type=int, default=5)
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--threads", type=int, default=None)
    demo.add_argument("--out", default="runs/demo")
    demo.add_argument("--no-progress", action="store_true")
    demo.set_defaults(func=_demo)

    bench = sub.add_parser("bench", help="benchmarks").add_subparsers(dest="bench", required=True)
    cl = bench.add_parser("cl", help="class-incremental benchmark of every method on one split")
    cl.add_argument(
        "--data", default="fashion-mnist", help="fashion-mnist, an .npz or a class-folder tree"
    )
    cl.add_argument("--tasks", type=int, default=5)
    cl.add_argument(
        "--methods",
        default="janus,inflora,lora-gpm,seq-lora,joint,frozen",
        help="comma-separated, from: " + ", ".join(list_methods()),
    )
    cl.add_argument("--ablation", action="store_true", help="add janus without OE, GR, DML")
    cl.add_argument("--quick", action="store_true", help="a preset that ends in minutes on 2 cores")
    cl.add_argument("--epochs", type=int, default=None, help="override the preset's epochs")
    cl.add_argument("--seed", type=int, default=0)
    cl.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a training setting (learner.config.TrainConfig), e.g. --set lr=2e-4, "
        "or a method field for every method, e.g. --set method.head=prototype",
    )
    cl.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    cl.add_argument("--out", default="runs/bench-cl")
    cl.add_argument("--no-progress", action="store_true")
    cl.set_defaults(func=_bench_cl)

    step = bench.add_parser(
        "step", help="training step time of methods, interleaved round by round, as ratios"
    )
    step.add_argument("--data", default="fashion-mnist")
    step.add_argument("--methods", default="janus", help="comma-separated methods to time")
    step.add_argument("--baseline", default="seq-lora", help="the ratios' denominator")
    step.add_argument("--rounds", type=int, default=5, help="timed passes per method")
    step.add_argument("--full", action="store_true", help="the full preset's data (default quick)")
    step.add_argument("--seed", type=int, default=0)
    step.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    step.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    step.add_argument("--out", default="runs/bench-step")
    step.set_defaults(func=_bench_step)

    from adapters_store.cli import register as register_store

    register_store(sub)
    from learner.jobs.cli import register as register_jobs

    register_jobs(sub)
    from service.commands import register as register_service

    register_service(sub, bench)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except (ValueError, FileNotFoundError) as exc:
        print(f"janus: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("janus: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
