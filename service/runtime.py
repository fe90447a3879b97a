"""One published version, loaded for inference: ONNX Runtime, or torch when it has no ONNX file.

`load_version` reads what serving needs through the store, each file checked against its
manifest digest: the manifest and `model.onnx` for ONNX Runtime (the adapters, head, subspace
state and prototypes are the learner's, tens of MB it never reads), the learner state's files for
torch (which rebuilds the model from them, `load_state`). It builds the session (providers CUDA
then CPU, intra-op threads per worker), checks the class names against the manifest and warms the
model with a batch, so a version that loads is known to answer.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from adapters_store import VersionStore
from adapters_store.manifest import ONNX
from learner.data.images import MODEL_INPUT
from learner.ort import import_onnxruntime
from service.config import Engine

PROVIDERS = ("CUDAExecutionProvider", "CPUExecutionProvider")


@dataclass(frozen=True)
class LoadedModel:
    """An immutable, warmed model of one version; `logits` maps pixels (B, 3, S, S), float values
    0–255 (`service.images.model_input`), to (B, C)."""

    version: str
    class_names: tuple[str, ...]
    size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    engine: str
    logits: Callable[[np.ndarray], np.ndarray]


def _onnx(version: str, data: bytes, threads: int) -> LoadedModel:
    ort = import_onnxruntime()

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    available = set(ort.get_available_providers())
    providers = [p for p in PROVIDERS if p in available]
    session = ort.InferenceSession(data, opts, providers=providers)
    meta = session.get_modelmeta().custom_metadata_map
    try:
        size = int(meta["janus.input_size"])
        mean = tuple(float(v) for v in json.loads(meta["janus.mean"]))
        std = tuple(float(v) for v in json.loads(meta["janus.std"]))
        names = tuple(str(c) for c in json.loads(meta["janus.class_names"]))
    except (KeyError, ValueError) as err:
        raise ValueError(f"version {version}: model.onnx lacks janus metadata ({err})") from None
    in_name, out_name = session.get_inputs()[0].name, session.get_outputs()[0].name
    # Versions exported before the graph normalised its input (no `janus.input`) take
    # (x / 255 − mean) / std; the same normalisation, done here instead of in the graph.
    legacy = "janus.input" not in meta
    if not legacy and meta["janus.input"] != MODEL_INPUT:
        raise ValueError(
            f"version {version}: model.onnx takes input {meta['janus.input']!r}, which this "
            "service does not know; upgrade the service"
        )
    scale = (1.0 / (255.0 * np.asarray(std, np.float32))).reshape(1, 3, 1, 1)
    shift = (-np.asarray(mean, np.float32) / np.asarray(std, np.float32)).reshape(1, 3, 1, 1)

    def logits(x: np.ndarray) -> np.ndarray:
        if legacy:
            x = (x * scale + shift).astype(np.float32)
        (out,) = session.run([out_name], {in_name: x})
        return np.asarray(out)

    engine = f"onnxruntime:{session.get_providers()[0]}"
    return LoadedModel(version, names, size, mean, std, engine, logits)  # type: ignore[arg-type]


class EngineMissing(RuntimeError):
    """This process lacks what the version needs (an ONNX model under JANUS_ENGINE=onnx, or torch
    in a serving image without it): a limit of the process, not a fault of the version, so it
    is never quarantined (another replica may serve it)."""


def _torch(store: VersionStore, version: str, threads: int) -> LoadedModel:
    try:
        import torch
    except ModuleNotFoundError as err:
        raise EngineMissing(
            f"version {version} has no {ONNX} and this process has no torch ({err}); serve it "
            "from a replica with the `learn` extra, or republish it with an ONNX model"
        ) from None

    from learner.jobs.versioning import backbone_digest, load_state
    from learner.state import build_model

    torch.set_num_threads(threads)
    state = load_state(store, version)
    expected = store.get(version).backbone.weights_sha256
    if backbone_digest(state.backbone) != expected:
        raise ValueError(
            f"version {version}: the backbone {state.backbone.name} this process builds differs "
            f"from the one it was trained on (sha256 {expected[:12]}…); serve its model.onnx "
            "(JANUS_ENGINE=auto) or fix the backbone weights"
        )
    model = build_model(state)

    def logits(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return model(torch.from_numpy(x)).numpy()

    spec = model.spec
    return LoadedModel(
        version,
        tuple(state.class_names),
        spec.size,
        tuple(spec.mean),  # type: ignore[arg-type]
        tuple(spec.std),  # type: ignore[arg-type]
        "torch",
        logits,
    )


def load_version(
    store: VersionStore, version: str, *, engine: Engine = "auto", threads: int = 1
) -> LoadedModel:
    """Verifies what serving reads, loads and warms a version; raises with the reason if it
    cannot serve."""
    manifest = store.get(version)  # its own digest checked
    if engine == "onnx" and ONNX not in manifest.files:
        raise EngineMissing(f"version {version} has no {ONNX} and JANUS_ENGINE=onnx")
    if engine != "torch" and ONNX in manifest.files:
        model = _onnx(version, store.read_bytes(version, ONNX), threads)  # size and sha256 checked
    else:  # torch rebuilds the model from the state's files, each checked as it is read
        model = _torch(store, version, threads)
    if list(model.class_names) != list(manifest.classes):
        raise ValueError(
            f"version {version}: the model's classes differ from its manifest; "
            "run `janus verify` and republish it"
        )
    warm = np.zeros((2, 3, model.size, model.size), np.float32)
    out = model.logits(warm)
    if out.shape != (2, len(model.class_names)) or not np.isfinite(out).all():
        raise ValueError(f"version {version}: warm-up gave logits of shape {out.shape}")
    return model


def check_in_child(store_uri: str, version: str, engine: Engine = "auto") -> str | None:
    """Loads a version as a serving worker would, in a child process (a load that crashes or
    exhausts memory ends only the child); None if it serves, else why not (one line)."""
    done = subprocess.run(
        [sys.executable, "-m", "service.runtime", store_uri, version, engine],
        capture_output=True,
        text=True,
        timeout=600,
    )
    if done.returncode == 0:
        return None
    lines = done.stderr.strip().splitlines()
    if done.returncode < 0 or not lines:
        return f"the process loading it ended with code {done.returncode}"
    return lines[-1]


def _main(argv: list[str]) -> int:
    """`python -m service.runtime STORE VERSION ENGINE`: exit 0 if the version loads."""
    from adapters_store import open_store

    uri, version, engine = argv
    try:
        load_version(open_store(uri, clean=False), version, engine=engine)  # type: ignore[arg-type]
    except Exception as err:
        print(f"{version} does not load: {type(err).__name__}: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(_main(sys.argv[1:]))
