"""The merged model as ONNX: fixed square input, dynamic batch, checked against torch.

The exported graph is `ContinualModel.forward`: pixels, float (B, 3, S, S) with values 0–255, →
logits (B, C) over every seen class, in head order; normalisation by the backbone's mean and std
is inside the graph. The side, the input convention (`janus.input`), mean, std and the class names
ride along as ONNX metadata, so a runtime needs nothing else to prepare inputs (with
`learner.data.images`) and to name outputs.
"""

from __future__ import annotations

import json
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
import torch

from learner.data.images import MODEL_INPUT
from learner.ort import import_onnxruntime
from learner.state import ContinualModel

INPUT = "images"
OUTPUT = "logits"
OPSET = 17


class ExportError(RuntimeError):
    """The ONNX export does not reproduce the torch model."""


def example_input(model: ContinualModel, batch: int = 2, seed: int = 0) -> torch.Tensor:
    """Random pixels (B, 3, S, S), values 0–255, for tracing."""
    gen = torch.Generator().manual_seed(seed)
    size = model.spec.size
    return 255.0 * torch.rand(batch, 3, size, size, generator=gen)


def export_onnx(model: ContinualModel, class_names: Sequence[str] = ()) -> bytes:
    """Serialised ONNX of `model` (eval mode, fp32, CPU) with a dynamic batch axis."""
    model = model.eval()
    x = example_input(model)
    with tempfile.TemporaryDirectory(prefix="janus-onnx-") as tmp, warnings.catch_warnings():
        path = Path(tmp) / "model.onnx"
        # The TorchScript exporter needs no extra packages and exports these models exactly;
        # torch marks it deprecated in favour of the dynamo exporter (needs onnxscript).
        warnings.simplefilter("ignore")
        with torch.no_grad():
            torch.onnx.export(
                model,
                (x,),
                str(path),
                input_names=[INPUT],
                output_names=[OUTPUT],
                dynamic_axes={INPUT: {0: "batch"}, OUTPUT: {0: "batch"}},
                opset_version=OPSET,
                dynamo=False,
            )
        proto = onnx.load(str(path))
    meta = {
        "janus.input": MODEL_INPUT,
        "janus.input_size": str(model.spec.size),
        "janus.mean": json.dumps(list(model.spec.mean)),
        "janus.std": json.dumps(list(model.spec.std)),
        "janus.class_names": json.dumps(list(class_names)),
    }
    for key, value in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(proto)
    return proto.SerializeToString()


def run_onnx(data: bytes, images: np.ndarray) -> np.ndarray:
    """Logits (B, C) of an exported model under ONNX Runtime (CPU) for inputs (B, 3, S, S)."""
    ort = import_onnxruntime()
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    session = ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])
    (out,) = session.run([OUTPUT], {INPUT: images.astype(np.float32)})
    return np.asarray(out)


def check_onnx(
    model: ContinualModel, data: bytes, images: torch.Tensor | None = None, tol: float = 1e-5
) -> float:
    """`max |onnx − torch| / max(1, max |torch|)` on `images` (model input (B, 3, S, S), e.g.
    real held-out images through `learner.inputs.prepare`; default 3 random ones, not the traced
    batch); raises past `tol`. Relative to the logits' scale: the LDA head's logits run to the
    hundreds, where fp32 rounding alone differs by more than any fixed absolute tolerance."""
    x = example_input(model, batch=3, seed=1) if images is None else images.float()
    with torch.no_grad():
        expected = model.eval()(x).numpy()
    got = run_onnx(data, x.numpy())
    if got.shape != expected.shape:
        raise ExportError(f"ONNX output shape {got.shape}, torch gives {expected.shape}")
    if not got.size:
        return 0.0
    err = float(np.abs(got - expected).max()) / max(1.0, float(np.abs(expected).max()))
    if not err <= tol:
        raise ExportError(f"ONNX output differs from torch by {err:.3g} relative (> {tol:g})")
    return err
