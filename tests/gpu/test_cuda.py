"""The learner on a CUDA device (`make gpu-check`; deselected by default, `-m gpu` runs them).

A state trained on the GPU is served on the CPU with the same answers, a CPU state continues on
the GPU, and every method's update rule runs there with the protected subspace kept.
"""

from __future__ import annotations

import pytest
import torch

from learner.config import LoRAConfig, TrainConfig
from learner.data import LabeledBatch
from learner.methods import get_method
from learner.state import LearnerState, build_model
from learner.train import evaluate, learn_task, predict_logits
from tests.conftest import TINY_BACKBONES

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]
LORA = LoRAConfig(rank=4, alpha=4)


def _task(digits: LabeledBatch, classes: list[int]) -> LabeledBatch:
    return digits.select_classes([f"digit{c}" for c in classes]).subset(range(150))


def _cfg(method: str = "janus") -> TrainConfig:
    return TrainConfig(method=get_method(method), epochs=1, design_samples=128, lora=LORA)


@pytest.mark.parametrize("backbone", sorted(TINY_BACKBONES))
def test_a_state_trained_on_cuda_answers_the_same_on_the_cpu(digits, backbone: str) -> None:
    state = LearnerState(TINY_BACKBONES[backbone], LORA)
    first = learn_task(state, _task(digits, [0, 1, 2]), _cfg(), device="cuda")
    second = learn_task(first.state, _task(digits, [3, 4, 5]), _cfg(), device="cuda")
    assert second.model.device.type == "cuda"
    assert second.metrics["violation"] < 1e-3  # GR keeps the protected subspace on the GPU too
    tensors = [t for g in second.state.to_tensors().values() for t in g.values()]
    assert all(t.device.type == "cpu" for t in tensors)
    cpu = build_model(second.state)
    images = torch.from_numpy(_task(digits, [0, 3]).images[:64]).permute(0, 3, 1, 2)
    side = cpu.spec.size
    pixels = torch.nn.functional.interpolate(images.float(), size=side).round().to(torch.uint8)
    on_gpu, on_cpu = predict_logits(second.model, pixels).cpu(), predict_logits(cpu, pixels)
    assert torch.allclose(on_gpu, on_cpu, atol=1e-3 * on_cpu.abs().max().item())


def test_a_cpu_state_continues_on_cuda_with_every_method(digits) -> None:
    for method in ("janus", "inflora", "lora-gpm", "lora-gpm-proj", "seq-lora"):
        state = LearnerState(TINY_BACKBONES["convnet"], LORA)
        first = learn_task(state, _task(digits, [0, 1, 2]), _cfg(method), device="cpu")
        second = learn_task(first.state, _task(digits, [3, 4, 5]), _cfg(method), device="cuda")
        seen = second.state.class_names
        acc = evaluate(second.model, _task(digits, [0, 1, 2, 3, 4, 5]), seen)
        assert acc > 40.0, (method, acc)  # six classes: chance is 16.7


def test_a_task_streamed_from_files_to_cuda_equals_the_task_in_memory(digits, tmp_path) -> None:
    """Reader processes, pinned memory and non-blocking copies give the same task as the images
    held in memory, on the GPU."""
    from learner.data import load_batch, open_batch, write_class_folders

    folder = write_class_folders(_task(digits, [2, 7]), tmp_path / "d")
    state = LearnerState(TINY_BACKBONES["convnet"], LORA)
    with open_batch(folder, image_size=32) as files:
        streamed = learn_task(state, files, _cfg(), device="cuda", workers=2)
    held = learn_task(state, load_batch(folder, image_size=32), _cfg(), device="cuda", workers=0)
    torch.testing.assert_close(streamed.state.head_weight, held.state.head_weight)
    assert streamed.metrics["loss"] == pytest.approx(held.metrics["loss"], rel=1e-4)
