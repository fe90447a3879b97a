"""ONNX export of the merged model and the state ⇄ store round trip (no services)."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch

from adapters_store import open_store
from adapters_store.manifest import ADAPTER, ONNX
from learner.config import LoRAConfig, TrainConfig
from learner.data import LabeledBatch
from learner.jobs.versioning import load_state, publish_state
from learner.methods import get_method
from learner.onnx_export import check_onnx, example_input, export_onnx, run_onnx
from learner.state import LearnerState, build_model
from learner.train import TaskResult, learn_task
from tests.conftest import TINY_BACKBONES


def _cfg() -> TrainConfig:
    return TrainConfig(method=get_method("janus"), epochs=1, num_threads=1, design_samples=64)


def _learn(state: LearnerState, digits: LabeledBatch, names: list[str]) -> TaskResult:
    return learn_task(state, digits.select_classes(names), _cfg())


@pytest.mark.parametrize("family", ["convnet", "vit"])
def test_onnx_matches_torch_with_dynamic_batch(family: str, digits: LabeledBatch) -> None:
    state = LearnerState(TINY_BACKBONES[family], LoRAConfig(rank=4))
    result = _learn(state, digits, ["digit0", "digit1"])
    data = export_onnx(result.model, result.state.class_names)
    assert check_onnx(result.model, data, tol=1e-5) <= 1e-5
    for batch in (1, 5):  # not the traced batch size
        x = example_input(result.model, batch=batch, seed=batch)
        with torch.no_grad():
            expected = result.model(x).numpy()
        got = run_onnx(data, x.numpy())
        assert got.shape == (batch, 2)
        np.testing.assert_allclose(got, expected, atol=1e-5 * np.abs(expected).max(), rtol=0)
    meta = {p.key: p.value for p in onnx.load_from_string(data).metadata_props}
    assert json.loads(meta["janus.class_names"]) == ["digit0", "digit1"]
    assert int(meta["janus.input_size"]) == result.model.spec.size


def test_publish_then_load_rebuilds_the_same_model(tmp_path, digits: LabeledBatch) -> None:
    store = open_store(tmp_path / "store")
    state = LearnerState(TINY_BACKBONES["convnet"], LoRAConfig(rank=4))
    first = _learn(state, digits, ["digit0", "digit1"])
    v1 = publish_state(
        store,
        first.state,
        _cfg(),
        parent=None,
        data_digest="sha256:a",
        metrics=first.metrics,
        onnx=export_onnx(first.model, first.state.class_names),
        idempotency_key="k1",
    )
    second = _learn(load_state(store, v1.id), digits, ["digit2", "digit3"])
    v2 = publish_state(
        store,
        second.state,
        _cfg(),
        parent=v1.id,
        data_digest="sha256:b",
        metrics={**second.metrics, "nan_metric": float("nan")},
    )
    assert [m.id for m in store.lineage(v2.id)] == [v2.id, v1.id]
    assert v2.task_index == 1 and v2.new_classes == ["digit2", "digit3"]
    assert v2.classes == ["digit0", "digit1", "digit2", "digit3"]
    assert "nan_metric" not in v2.metrics and v2.method == "janus"
    assert ONNX in v1.files and ONNX not in v2.files and ADAPTER in v2.files

    loaded = load_state(store, v2.id)
    assert loaded.task_sizes == [2, 2] and len(loaded.adapters) == 2
    x = example_input(second.model, batch=4)
    with torch.no_grad():
        torch.testing.assert_close(build_model(loaded)(x), second.model(x), atol=1e-4, rtol=1e-5)


def test_a_graph_exported_before_it_normalised_its_input_still_serves(digits) -> None:
    """Versions exported before the graph normalised its pixels (no `janus.input` metadata)
    take normalised input; the runtime normalises for them, so they answer as before."""
    import tempfile
    from pathlib import Path

    from service.runtime import _onnx

    result = _learn(
        LearnerState(TINY_BACKBONES["convnet"], LoRAConfig(rank=4)), digits, ["digit0", "digit1"]
    )
    model = result.model

    class Legacy(torch.nn.Module):  # the old graph: normalised images in, logits out
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return model.head(model.backbone(x))

    current = onnx.load_from_string(export_onnx(model, result.state.class_names))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "legacy.onnx"
        torch.onnx.export(
            Legacy(), (model.normalize_pixels(example_input(model)),), str(path),
            input_names=["images"], output_names=["logits"],
            dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}}, dynamo=False,
        )  # fmt: skip
        legacy = onnx.load(str(path))
    for prop in current.metadata_props:
        if prop.key != "janus.input":
            entry = legacy.metadata_props.add()
            entry.key, entry.value = prop.key, prop.value
    pixels = example_input(model, batch=3, seed=7)
    with torch.no_grad():
        expected = model(pixels).numpy()
    for graph in (current, legacy):
        got = _onnx("v0001", graph.SerializeToString(), threads=1).logits(pixels.numpy())
        np.testing.assert_allclose(got, expected, atol=1e-4 * np.abs(expected).max(), rtol=0)
    marker = next(p for p in current.metadata_props if p.key == "janus.input")
    marker.value = "bgr-0-1"  # an input convention this service does not know
    with pytest.raises(ValueError, match="does not know"):
        _onnx("v0001", current.SerializeToString(), threads=1)
