"""The Open Inference Protocol against a real `bentoml serve` (2 workers), driven by a client the
project did not write (`tritonclient`'s HTTP client), every answer compared with `/classify`'s
for the same images. The store is a copy of the service test store (v0001: digit0/1; v0002:
+ digit2/3, serving; v0003: + digit4, torch only)."""

from __future__ import annotations

import base64
import io
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from PIL import Image
from tritonclient.utils import InferenceServerException

from learner.data import LabeledBatch
from learner.data.images import model_input, pixels
from tests.service.conftest import ADMIN, png
from tests.service.stack import Server, start_server

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


@pytest.fixture(scope="module")
def server(version_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("v2")
    shutil.copytree(version_store, root / "store")
    env = {
        "JANUS_STORE": str(root / "store"),
        "JANUS_DATA_DIR": str(root / "data"),
        "JANUS_MAX_PIXELS": "1000000",
    }
    started = start_server(env, root / "bentoml.log", ADMIN)
    try:
        started.wait_live()
        started.wait_all_serving("v0002")
        yield started
    finally:
        started.stop()


@pytest.fixture()
def client(server: Server) -> Iterator[triton.InferenceServerClient]:
    c = triton.InferenceServerClient(url=server.url.removeprefix("http://"), network_timeout=60)
    yield c
    c.close()


def _digits(digits: LabeledBatch, per_class: int = 2) -> list[bytes]:
    picks = [int(i) for c in range(4) for i in np.nonzero(digits.labels == c)[0][:per_class]]
    return [png(digits.images[i, ..., 0]) for i in picks]


def _classify(server: Server, images: list[bytes], **params: str) -> dict:  # type: ignore[type-arg]
    files = [("images", (f"{i}.png", b, "image/png")) for i, b in enumerate(images)]
    r = server.post("/classify", files=files, params={"top_k": "20", **params})
    assert r.status_code == 200, r.text
    return dict(r.json())


def _scores(answer: dict, names: list[str]) -> np.ndarray:  # type: ignore[type-arg]
    """/classify's answer as a (N, C) array in the metadata's class order."""
    out = np.zeros((len(answer["results"]), len(names)))
    for i, result in enumerate(answer["results"]):
        for p in result["predictions"]:
            out[i, names.index(p["label"])] = p["score"]
    return out


def _images_input(images: list[bytes], binary: bool = True) -> triton.InferInput:
    """Raw bytes through the binary data extension, or base64 strings in JSON (JSON strings
    cannot hold raw image bytes)."""
    tensor = triton.InferInput("images", [len(images)], "BYTES")
    items = images if binary else [base64.b64encode(b).decode() for b in images]
    tensor.set_data_from_numpy(np.array(items, dtype=np.object_), binary_data=binary)
    return tensor


def test_metadata_and_readiness(client: triton.InferenceServerClient) -> None:
    assert client.is_server_live() and client.is_server_ready()
    server = client.get_server_metadata()
    assert server["name"] == "janus-serve"
    assert {"binary_tensor_data", "classification"} <= set(server["extensions"])
    meta = client.get_model_metadata("janus")
    assert meta["versions"] == ["v0001", "v0002", "v0003"]
    assert meta["parameters"]["version"] == "v0002"
    assert meta["parameters"]["classes"] == ["digit0", "digit1", "digit2", "digit3"]
    assert {(t["name"], t["datatype"]) for t in meta["inputs"]} == {
        ("images", "BYTES"),
        ("pixels", "FP32"),
    }
    assert {"name": "probabilities", "datatype": "FP32", "shape": [-1, 4]} in meta["outputs"]
    assert client.is_model_ready("janus") and client.is_model_ready("janus", "v0001")
    assert not client.is_model_ready("janus", "v0099")
    assert not client.is_model_ready("resnet")
    one = client.get_model_metadata("janus", "v0001")
    assert one["parameters"]["classes"] == ["digit0", "digit1"]


def test_inference_on_encoded_images_equals_classify(
    server: Server, client: triton.InferenceServerClient, digits: LabeledBatch
) -> None:
    images = _digits(digits)
    names = client.get_model_metadata("janus")["parameters"]["classes"]
    outputs = [
        triton.InferRequestedOutput("probabilities", binary_data=True),
        triton.InferRequestedOutput("labels", binary_data=False),
    ]
    result = client.infer("janus", [_images_input(images)], outputs=outputs)
    assert result.get_response()["model_version"] == "v0002"
    probs = result.as_numpy("probabilities")
    assert probs.shape == (8, 4) and probs.dtype == np.float32
    expected = _scores(_classify(server, images), names)
    np.testing.assert_allclose(probs, expected, rtol=1e-4, atol=1e-6)
    labels = result.as_numpy("labels")  # top 5 of 4 classes: all of them, best first
    assert labels.shape == (8, 4)
    assert [str(row[0], "utf-8") if isinstance(row[0], bytes) else row[0] for row in labels] == [
        names[int(i)] for i in np.argmax(expected, axis=1)
    ]


def test_classification_extension_and_json_inputs(
    server: Server, client: triton.InferenceServerClient, digits: LabeledBatch
) -> None:
    images = _digits(digits, 1)
    requested = [triton.InferRequestedOutput("probabilities", class_count=2)]
    result = client.infer("janus", [_images_input(images, binary=False)], outputs=requested)
    rows = result.as_numpy("probabilities")
    assert rows.shape == (4, 2)
    classified = _classify(server, images)
    for row, answer in zip(rows, classified["results"], strict=True):
        score, index, label = row[0].decode().split(":")
        best = answer["predictions"][0]
        assert label == best["label"] and float(score) == pytest.approx(best["score"], abs=1e-5)
        assert int(index) == ["digit0", "digit1", "digit2", "digit3"].index(label)


def test_inference_on_preprocessed_tensors_equals_the_images(
    server: Server, client: triton.InferenceServerClient, digits: LabeledBatch
) -> None:
    images = _digits(digits)
    side = client.get_model_metadata("janus")["inputs"][1]["shape"][-1]
    x = model_input([pixels(b, side, name=f"{i}") for i, b in enumerate(images)])  # (N, 3, S, S)
    for binary in (True, False):
        tensor = triton.InferInput("pixels", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x, binary_data=binary)
        probs = client.infer("janus", [tensor]).as_numpy("probabilities")
        expected = _scores(_classify(server, images), ["digit0", "digit1", "digit2", "digit3"])
        np.testing.assert_allclose(probs, expected, rtol=1e-4, atol=1e-6)
    wrong = triton.InferInput("pixels", [1, 3, side + 1, side + 1], "FP32")
    wrong.set_data_from_numpy(np.zeros((1, 3, side + 1, side + 1), np.float32))
    with pytest.raises(InferenceServerException, match=rf"\[N, 3, {side}, {side}\]") as err:
        client.infer("janus", [wrong])
    assert err.value.status() == "400"


def test_a_pinned_version_answers_like_classify_pinned(
    server: Server, client: triton.InferenceServerClient, digits: LabeledBatch
) -> None:
    images = _digits(digits)
    result = client.infer("janus", [_images_input(images)], model_version="v0001")
    assert result.get_response()["model_version"] == "v0001"
    expected = _scores(_classify(server, images, version="v0001"), ["digit0", "digit1"])
    np.testing.assert_allclose(result.as_numpy("probabilities"), expected, rtol=1e-4, atol=1e-6)
    with pytest.raises(InferenceServerException) as err:
        client.infer("janus", [_images_input(images)], model_version="v0099")
    assert err.value.status() == "404"


def test_refused_inputs_get_the_status_classify_gives(
    server: Server, client: triton.InferenceServerClient
) -> None:
    big = io.BytesIO()
    Image.new("L", (1200, 1200)).save(big, format="PNG")  # 1.44 M pixels > JANUS_MAX_PIXELS
    r = server.post("/classify", files=[("images", ("big.png", big.getvalue(), "image/png"))])
    with pytest.raises(InferenceServerException, match="JANUS_MAX_PIXELS") as err:
        client.infer("janus", [_images_input([big.getvalue()])])
    assert err.value.status() == str(r.status_code) == "413"
    junk = b"not an image at all"
    r = server.post("/classify", files=[("images", ("junk.png", junk, "image/png"))])
    with pytest.raises(InferenceServerException) as err:
        client.infer("janus", [_images_input([junk])])
    assert err.value.status() == str(r.status_code)
    too_many = [junk] * 65  # JANUS_MAX_IMAGES is 64
    with pytest.raises(InferenceServerException, match="limit is 64") as err:  # as /classify
        client.infer("janus", [_images_input(too_many)])
    assert err.value.status() == "413"
    r = httpx.post(f"{server.url}/v2/models/resnet/infer", json={"inputs": []}, timeout=30)
    assert r.status_code == 404 and "janus" in r.json()["error"]
    r = httpx.post(
        f"{server.url}/v2/models/janus/infer",
        content=b'{"inputs": [',
        headers={"Content-Type": "application/json"},
        timeout=30,
    )
    assert r.status_code == 400 and set(r.json()) == {"error"}
