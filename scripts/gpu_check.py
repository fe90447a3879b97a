"""`make gpu-check`: the checks that need a CUDA device, in one short script (under 8 minutes).

1. the `gpu`-marked tests (tests/gpu);
2. a short run of the paper's backbone, ViT-B/16 (random weights: nothing is downloaded), at
   224 px on 3 tasks of real digits, janus and seq-lora: training images/s, janus's step over
   seq-lora's, peak GPU memory;
3. serving throughput of the last janus model: ONNX Runtime (CUDA provider) against torch on the
   GPU, batches of 32.

On a machine without CUDA it says so and exits 0. CI does not run it.
"""

from __future__ import annotations

import subprocess
import sys
import time


def _throughput(run, batch, repeats: int = 20) -> float:  # type: ignore[no-untyped-def]
    run(batch)  # warm
    start = time.perf_counter()
    for _ in range(repeats):
        run(batch)
    return repeats * len(batch) / (time.perf_counter() - start)


def main() -> int:
    import torch

    if not torch.cuda.is_available():
        print(f"gpu-check: torch {torch.__version__} sees no CUDA device here; nothing to check")
        return 0
    print(f"gpu-check on {torch.cuda.get_device_name(0)}, torch {torch.__version__}", flush=True)
    tests = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "gpu", "tests/gpu"])

    import numpy as np
    from sklearn.datasets import load_digits

    from learner.config import BackboneConfig, LoRAConfig, TrainConfig
    from learner.data import LabeledBatch
    from learner.methods import get_method
    from learner.onnx_export import export_onnx
    from learner.ort import import_onnxruntime
    from learner.state import LearnerState
    from learner.train import learn_task

    d = load_digits()
    images = (d.images * (255 / 16)).round().astype(np.uint8)[..., None]
    digits = LabeledBatch(images, d.target.astype(np.int64), tuple(f"d{i}" for i in range(10)))
    tasks = [
        digits.select_classes([f"d{c}" for c in cs]) for cs in ([0, 1, 2], [3, 4, 5], [6, 7, 8])
    ]
    backbone = BackboneConfig(name="vit_base_patch16_224", weights="none", input_size=224)
    lora = LoRAConfig(rank=10, alpha=10)
    rows, model = {}, None
    for method in ("seq-lora", "janus"):
        cfg = TrainConfig(method=get_method(method), epochs=1, batch_size=32, lora=lora)
        torch.cuda.reset_peak_memory_stats()
        state, steps, step_s, images_s = LearnerState(backbone, lora), 0.0, 0.0, 0.0
        for task in tasks:
            result = learn_task(state, task, cfg, device="cuda")
            state, model = result.state, result.model
            m = result.metrics
            steps += m["steps"]
            step_s += m["step_s"] * m["steps"]
            images_s = len(task) * cfg.epochs / m["train_s"]
        rows[method] = (step_s / steps, images_s, torch.cuda.max_memory_allocated() / 2**30)
    print("\n| method | step ms | images/s (last task) | peak GPU GiB | step / seq-lora |")
    print("|---|---:|---:|---:|---:|")
    for method, (step, ims, mem) in rows.items():
        ratio = step / rows["seq-lora"][0]
        print(f"| {method} | {1000 * step:.0f} | {ims:.0f} | {mem:.1f} | {ratio:.2f} |")

    assert model is not None
    x = torch.rand(32, 3, 224, 224) * 255
    with torch.inference_mode():
        torch_ips = _throughput(lambda b: model(b.cuda()).cpu(), x)
    ort = import_onnxruntime()
    session = ort.InferenceSession(
        export_onnx(model.cpu(), state.class_names),
        providers=["CUDAExecutionProvider", "CPUExecutionProvider"],
    )
    name = session.get_inputs()[0].name
    ort_ips = _throughput(lambda b: session.run(None, {name: b}), x.numpy())
    print(
        f"\nserving, batch 32: torch cuda {torch_ips:.0f} images/s, onnxruntime "
        f"{session.get_providers()[0]} {ort_ips:.0f} images/s ({ort_ips / torch_ips:.2f} ×)"
    )
    return tests.returncode


if __name__ == "__main__":
    sys.exit(main())
