"""The `janus` command line: benchmarks, the demo run, and every command of the store, the job
pipeline and the service, in one parser.

Every command exits 0 when it did what was asked, 1 when it failed, 2 on a usage error (argparse's
own: an unknown option, a missing argument, an unknown method); `EXIT_CODES` says so in `--help`.
A failure a user can hit (an unreachable Redis or service, a missing file, an invalid `JANUS_*`
setting, a store error) is one line on stderr that says what to do, never a traceback; neither is
a reader that goes away (`janus history | head -1`).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from tqdm import tqdm

from adapters_store import StoreError
from adapters_store.cli import Parser, add_command
from adapters_store.settings import SettingsError
from learner.device import PRECISIONS
from learner.methods import ABLATIONS, BASELINES, get_method, list_methods
from service.client import ServiceError

EXIT_CODES = """exit codes:
  0    success
  1    failure: one line on stderr says why (unreachable Redis or service, missing file,
       invalid JANUS_* setting, store error), or a check or learn job failed
  2    usage error (bad arguments)
  130  interrupted (Ctrl-C)"""


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


def _methods(text: str) -> tuple[str, ...]:
    """`--methods a,b`: known method names (an unknown one is a usage error)."""
    names = tuple(dict.fromkeys(m.strip() for m in text.split(",") if m.strip()))
    if not names:
        raise argparse.ArgumentTypeError("name at least one method")
    for name in names:
        try:
            get_method(name)
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err)) from None
    return names


PRESET_NAMES = (
    "cl",
    "quick",
    "fashion-64",
    "paper-cifar100",
    "paper-imagenet-r",
    "paper-imagenet-r-20",
    "paper-domainnet",
    "paper-imagenet100",
)
"""`learner.bench.PRESETS`' names, without importing torch to parse arguments."""


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number of at least 1, got {text!r}")
    return value


def _timed_methods(text: str) -> tuple[str, ...]:
    """`bench step --methods`: methods that train something, so have a step time."""
    names = _methods(text)
    for name in names:
        if not get_method(name).adapt:
            raise argparse.ArgumentTypeError(
                f"method {name!r} trains nothing, so it has no step time; drop it"
            )
    return names


def _overrides(args: argparse.Namespace) -> dict[str, object]:
    """`--set KEY=VALUE` settings, plus `--threads`."""
    from learner.jobs.cli import parse_settings

    overrides = parse_settings(args.set)
    if args.threads:
        overrides["num_threads"] = args.threads
    return overrides


def _bench_cl(args: argparse.Namespace) -> int:
    from learner.bench import BenchConfig, chosen_step_sizes, default_jobs, run_benchmark
    from learner.metrics import markdown_table, matrix_markdown

    overrides = _overrides(args)
    if args.epochs:
        overrides["epochs"] = args.epochs
    cfg = BenchConfig(
        data=args.data,
        tasks_override=args.tasks,
        backbone_override=_backbone(args),
        loader_workers=args.loader_workers,
        methods=args.methods,
        preset=args.preset,
        quick=args.quick,
        seed=args.seed,
        seeds=args.seeds,
        tune=not args.no_tune,
        chosen=chosen_step_sizes(Path(args.step_sizes_from)) if args.step_sizes_from else {},
        train_overrides=overrides,
        device=args.device,
        precision=args.precision,
        jobs=args.jobs or default_jobs(args.device),
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


def _backbone(args: argparse.Namespace) -> Any:
    """`--backbone NAME` (random weights) and `--backbone-file PATH` (safetensors) as a
    BackboneConfig; None: the preset's."""
    from learner.bench import PRESETS
    from learner.config import BackboneConfig

    name, path = getattr(args, "backbone", None), getattr(args, "backbone_file", None)
    if name is None and path is None:
        return None
    if path is not None and not Path(path).is_file():
        raise SystemExit(f"janus: error: --backbone-file {path}: no such file")
    preset = PRESETS[args.preset].backbone or BackboneConfig()
    return BackboneConfig(
        name=name or preset.name,
        weights="file" if path else "none",
        path=str(Path(path).resolve()) if path else None,
    )


def _bench_step(args: argparse.Namespace) -> int:
    import json

    from learner.bench import BenchConfig, run_step_benchmark

    cfg = BenchConfig(
        data=args.data,
        methods=args.methods,
        preset="cl" if args.full else "quick",
        seed=args.seed,
        train_overrides=_overrides(args),
        device=args.device,
        precision=args.precision,
    )
    results = run_step_benchmark(cfg, rounds=args.rounds, baseline=args.baseline)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "step.json").write_text(json.dumps(results, indent=2) + "\n")
    print(
        f"\n| method | step ms (median of {args.rounds}) | step / {args.baseline} | task start s "
        f"| step loop s | task end s | task s | task / {args.baseline} |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, res in results["methods"].items():
        print(
            f"| {name} | {1000 * res['step_s']:.0f} | {res['ratio']:.2f} | {res['start_s']:.1f} "
            f"| {res['train_s']:.1f} | {res['end_s']:.1f} | {res['task_s']:.1f} "
            f"| {res['task_ratio']:.2f} |"
        )
    print(f"\nwrote {out / 'step.json'}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    """A short class-incremental run of janus alone: `bench cl`'s quick preset."""
    args.methods, args.quick, args.ablation, args.epochs = ("janus",), True, False, None
    args.preset, args.loader_workers = "quick", 0
    args.set, args.seeds, args.no_tune, args.step_sizes_from = [], 1, True, None
    args.jobs = 1  # one janus run: nothing to run beside it
    return _bench_cl(args)


def _version() -> str:
    try:
        return version("janus-serve")
    except PackageNotFoundError:
        return "unknown (not installed: run `make setup`)"


def _data_options(parser: argparse.ArgumentParser, out: str) -> None:
    """The options every benchmark shares: data, seed, threads, output folder."""
    parser.add_argument(
        "--data",
        default="fashion-mnist",
        help="fashion-mnist, a CIFAR-100 binary folder, an .npz or a class-folder tree",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the split and training")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads of each run (default: torch's choice; bench cl: the cores "
        "shared among its --jobs)",
    )
    parser.add_argument(
        "--device",
        default=os.environ.get("JANUS_DEVICE", "auto"),
        help="where the learner computes: auto (CUDA if there is one), cpu, cuda or cuda:N "
        "(default: $JANUS_DEVICE, else auto)",
    )
    parser.add_argument(
        "--precision",
        choices=PRECISIONS,
        default=os.environ.get("JANUS_PRECISION", "fp32"),
        help="the frozen forward's precision: bf16 autocast, or fp32 (default: "
        "$JANUS_PRECISION, else fp32)",
    )
    parser.add_argument("--out", default=out, help="folder the results are written to")


def _set_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a training setting (learner.config.TrainConfig; repeatable), e.g. "
        "--set lr=2e-4, or a method field for every method, e.g. --set method.head=prototype",
    )


def _check_load(store_uri: str, version: str) -> str | None:
    """`janus activate`'s test load, in a child process (`service.runtime.check_in_child`)."""
    from service.config import ServiceSettings
    from service.runtime import check_in_child

    return check_in_child(store_uri, version, ServiceSettings.from_env().engine)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="janus",
        description="Continual-learning image classification with Janus-LoRA.",
        epilog=EXIT_CODES,
    )
    parser.add_argument("--version", action="version", version=f"janus {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, title="commands", metavar="COMMAND")

    demo = add_command(sub, "demo", "a short class-incremental run on Fashion-MNIST (offline)")
    _data_options(demo, "runs/demo")
    demo.add_argument("--tasks", type=int, default=5, help="tasks the classes are split into")
    demo.add_argument("--no-progress", action="store_true", help="draw no progress bars")
    demo.set_defaults(func=_demo)

    benches = add_command(sub, "bench", "benchmarks: accuracy, training step time, serving")
    bench = benches.add_subparsers(
        dest="bench", required=True, title="benchmarks", metavar="BENCHMARK"
    )
    methods = ", ".join(list_methods())
    cl = add_command(bench, "cl", "class-incremental benchmark of every method on one split")
    _data_options(cl, "runs/bench-cl")
    cl.add_argument(
        "--tasks",
        type=_positive,
        default=None,
        help="tasks the classes are split into (default: the preset's, 5 for the Fashion-MNIST "
        "ones)",
    )
    cl.add_argument(
        "--methods",
        type=_methods,
        default=",".join(BASELINES),
        help=f"comma-separated, from: {methods}",
    )
    cl.add_argument(
        "--ablation",
        action="store_true",
        help="add the paper's ablation grid: " + ", ".join(ABLATIONS),
    )
    cl.add_argument("--seeds", type=_positive, default=3, help="class orders run, from --seed on")
    cl.add_argument(
        "--jobs",
        type=_positive,
        default=None,
        help="sequence runs at once, each in its own process with its share of the cores "
        "(1: in this process, with progress bars; default: the cores, at most 4)",
    )
    cl.add_argument(
        "--no-tune",
        action="store_true",
        help="keep every method's default step size (default: each chosen on a validation "
        "split carved from the training data)",
    )
    cl.add_argument(
        "--step-sizes-from",
        metavar="RESULTS_JSON",
        default=None,
        help="reuse the step sizes an earlier run chose (its results.json) instead of searching",
    )
    cl.add_argument(
        "--preset",
        choices=PRESET_NAMES,
        default="cl",
        help="data, model and training budget: cl (Fashion-MNIST at 28 px), quick (the same in "
        "minutes), fashion-64 (upsampled to 64 px); paper-cifar100, paper-imagenet-r (10 tasks), "
        "paper-imagenet-r-20, paper-domainnet, paper-imagenet100: the paper's benchmarks and "
        "settings (ViT-B/16 in21k, LoRA rank 10 on K and V, Adam 5e-4, batch 128, 224 px) on "
        "the --data you have",
    )
    cl.add_argument(
        "--quick",
        action="store_true",
        help="the preset's quick version: cl → quick; a paper preset with 8 images per class "
        "and one epoch (a check that it runs)",
    )
    cl.add_argument(
        "--backbone",
        default=None,
        metavar="TIMM_NAME",
        help="another timm backbone, random weights unless --backbone-file (checks on a CPU)",
    )
    cl.add_argument(
        "--backbone-file",
        default=None,
        metavar="SAFETENSORS",
        help="the backbone's weights from a local safetensors file in timm's names (e.g. the "
        "paper presets' vit_base_patch16_224.augreg_in21k, which otherwise come from the hub)",
    )
    cl.add_argument(
        "--loader-workers",
        type=int,
        default=2,
        help="processes that decode images on disk (the paper presets' folders) while training",
    )
    cl.add_argument(
        "--epochs", type=int, default=None, help="epochs per task (default: the preset's)"
    )
    _set_option(cl)
    cl.add_argument("--no-progress", action="store_true", help="draw no progress bars")
    cl.set_defaults(func=_bench_cl)

    adapting = [m for m in list_methods() if get_method(m).adapt]
    step = add_command(
        bench, "step", "training step time of methods, interleaved round by round, as ratios"
    )
    _data_options(step, "runs/bench-step")
    step.add_argument(
        "--methods",
        type=_timed_methods,
        default="janus",
        help=f"comma-separated methods to time, from: {', '.join(adapting)}",
    )
    step.add_argument(
        "--baseline",
        choices=adapting,
        default="seq-lora",
        metavar="METHOD",
        help="the method whose step time is the ratios' denominator",
    )
    step.add_argument("--rounds", type=int, default=5, help="timed passes per method")
    step.add_argument(
        "--full", action="store_true", help="the cl preset's data (default: the quick one)"
    )
    _set_option(step)
    step.set_defaults(func=_bench_step)

    from adapters_store.cli import register as register_store
    from service.promotion import local_announce_move, local_shadow_counts

    register_store(
        sub,
        check_load=_check_load,
        shadow_counts=local_shadow_counts,
        announce=local_announce_move,
    )
    from learner.jobs.cli import register as register_jobs

    register_jobs(sub)
    from service.commands import register as register_service

    register_service(sub, bench)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Runs one `janus` command; returns its exit code (0 ok, 1 failure, 2 usage error)."""
    try:
        code = _run(argv)
        sys.stdout.flush()  # output still buffered meets a closed pipe here, not at exit
    except BrokenPipeError:
        # the reader went away (`janus history | head -1`): the recipe of the Python docs
        # (signal module, "Note on SIGPIPE"): the rest of the output goes nowhere, exit 1
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
    return code


def _run(argv: Sequence[str] | None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as done:  # after --help or --version (0), or a usage error (2)
        return done.code if isinstance(done.code, int) else 2
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        print("janus: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        raise
    except (ServiceError, StoreError, ValueError, OSError) as err:
        print(f"janus: error: {_one_line(err)}", file=sys.stderr)
        return 1


def _one_line(err: Exception) -> str:
    """What went wrong, on one line, with what to do where that is known."""
    if isinstance(err, SettingsError):
        text = f"{err}; fix or unset it (`janus settings --markdown` lists every variable)"
    elif isinstance(err, ValidationError):
        problems = "; ".join(
            f"{'.'.join(str(part) for part in e['loc']) or 'value'}: {e['msg']}"
            for e in err.errors()
        )
        text = f"invalid {err.title}: {problems}"
    elif isinstance(err, OSError) and err.filename is not None:
        text = f"{err.filename}: {err.strerror}"
    else:
        text = str(err) or type(err).__name__
    return " ".join(text.split())


if __name__ == "__main__":
    sys.exit(main())
