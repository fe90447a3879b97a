"""Devices: the spellings, the one-line refusal of a device the machine lacks, and the learner's
device-generic path run on the CPU (its CUDA run is `make gpu-check`, tests/gpu)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from learner.config import LoRAConfig, TrainConfig
from learner.device import DeviceError, resolve_device
from learner.state import LearnerState, build_model
from learner.train import evaluate, learn_task
from tests.conftest import TINY_BACKBONES

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="asserts a machine without CUDA")


def test_spellings_resolve_and_a_missing_cuda_is_one_line() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto") == torch.device("cpu")  # no CUDA here
    for spec in ("cuda", "cuda:1"):
        with pytest.raises(DeviceError, match=r"sees no CUDA device.*--device cpu") as err:
            resolve_device(spec)
        assert "\n" not in str(err.value)
    with pytest.raises(DeviceError, match="not one of auto, cpu, cuda, cuda:N"):
        resolve_device("gpu")


def test_the_cli_refuses_cuda_before_any_training(tmp_path: Path, capsys) -> None:
    from service.cli import main

    out = tmp_path / "out"
    code = main(["bench", "cl", "--quick", "--device", "cuda", "--out", str(out), "--no-progress"])
    assert code == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("janus: error: device 'cuda'") and "\n" not in err
    assert not out.exists()  # nothing ran, nothing written


def test_job_settings_take_a_device() -> None:
    from adapters_store.settings import SettingsError
    from learner.jobs.settings import JobSettings

    assert JobSettings.from_env({"JANUS_DEVICE": "cuda:1"}).device == "cuda:1"
    assert JobSettings.from_env({}).device == "auto"
    with pytest.raises(SettingsError, match="JANUS_DEVICE"):
        JobSettings.from_env({"JANUS_DEVICE": "tpu"})


def _tensors(state: LearnerState) -> list[torch.Tensor]:
    out = [t for group in state.to_tensors().values() for t in group.values()]
    out += [t for adapter in state.adapters for t in adapter.values()]
    return out


def test_learn_task_on_an_explicit_device_keeps_the_state_on_the_cpu(digits) -> None:
    state = LearnerState(TINY_BACKBONES["convnet"], LoRAConfig(rank=2, alpha=2))
    cfg = TrainConfig(epochs=1, design_samples=64, lora=LoRAConfig(rank=2, alpha=2))
    first = digits.select_classes(["digit0", "digit1"]).subset(range(80))
    result = learn_task(state, first, cfg, device=torch.device("cpu"))
    later = digits.select_classes(["digit2", "digit3"]).subset(range(80))
    second = learn_task(result.state, later, cfg, device="cpu")
    assert all(t.device.type == "cpu" for t in _tensors(second.state))
    assert second.model.device == torch.device("cpu")
    rebuilt = build_model(second.state)  # what a service builds from the stored state
    seen = second.state.class_names
    test = digits.select_classes(seen).subset(range(200))
    assert evaluate(rebuilt, test, seen) == pytest.approx(evaluate(second.model, test, seen))


def test_gpu_check_says_so_and_passes_without_cuda() -> None:
    import subprocess
    import sys

    script = Path(__file__).parents[2] / "scripts" / "gpu_check.py"
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert "sees no CUDA device here; nothing to check" in done.stdout


def test_bf16_runs_the_frozen_forward_in_bfloat16_and_keeps_statistics_wide(digits) -> None:
    from learner.inputs import to_uint8_tensor
    from learner.train import extract_features

    lora = LoRAConfig(rank=2, alpha=2)
    state = LearnerState(TINY_BACKBONES["convnet"], lora)
    cfg = TrainConfig(epochs=2, design_samples=64, lora=lora)
    first = digits.select_classes(["digit0", "digit1", "digit2"]).subset(range(150))
    later = digits.select_classes(["digit3", "digit4", "digit5"]).subset(range(150))
    results = {}
    for precision in ("fp32", "bf16"):
        one = learn_task(state, first, cfg, precision=precision)
        results[precision] = learn_task(one.state, later, cfg, precision=precision)
    bf16 = results["bf16"]
    assert bf16.metrics["violation"] < 1e-3  # the update stays exact: GR runs in float32
    for sub in bf16.state.subspace.values():
        assert sub.second_moment.dtype == torch.float64 and torch.isfinite(sub.second_moment).all()
    wide = (torch.float32, torch.float64)  # no bfloat16 reaches the stored state
    assert all(t.dtype in wide for t in _tensors(bf16.state) if t.is_floating_point())
    assert all(t.dtype == torch.float32 for a in bf16.state.adapters for t in a.values())
    model = results["fp32"].model
    side = model.spec.size
    pixels = to_uint8_tensor(later.resized(side).images[:32])
    exact = extract_features(model, pixels)
    low = extract_features(model, pixels, precision="bf16")
    assert low.dtype == torch.float32 and not torch.equal(low, exact)  # bfloat16 arithmetic ran
    assert (low - exact).norm() < 0.05 * exact.norm()
    seen = bf16.state.class_names
    test = digits.select_classes(seen).subset(range(300))
    fp32_acc = evaluate(results["fp32"].model, test, seen)
    assert evaluate(bf16.model, test, seen) > fp32_acc - 10  # the same learner, a little noisier


def test_a_worker_asked_for_a_missing_cuda_stops_at_start_in_one_line(
    tmp_path: Path, monkeypatch, capsys
) -> None:
    from service.cli import main

    monkeypatch.setenv("JANUS_DATA_DIR", str(tmp_path))
    assert main(["worker", "--device", "cuda:1"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("janus: error: device 'cuda:1'") and "\n" not in err
    assert not (tmp_path / "redis").exists()  # stopped before starting anything
