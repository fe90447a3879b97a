"""Pinning, aliases and shadow traffic through the HTTP API, in-process, on a copy of the
service store (v0001: digit0/1; v0002: + digit2/3, serving; v0003: + digit4, torch only) and a
real Redis."""

from __future__ import annotations

import shutil
import threading
import time
from collections import Counter
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import redis
from prometheus_client import REGISTRY

from learner.data import LabeledBatch
from learner.data.images import model_input, pixels
from learner.jobs.redis_embedded import EmbeddedRedis
from service.pinned import Busy, PinnedVersions
from service.runtime import LoadedModel, load_version
from service.shadow import clear_counts, read_counts
from service.swap import load_recorded
from tests.service.conftest import ADMIN, Api, make_api, png

AUTH = {"Authorization": f"Bearer {ADMIN}"}


@pytest.fixture()
def own_api(version_store: Path, tmp_path: Path, redis_server: EmbeddedRedis) -> Iterator[Api]:
    """The API on its own copy of the store (aliases and shadow change it), with Redis."""
    root = tmp_path / "store"
    shutil.copytree(version_store, root)
    a = make_api(root, redis_url=redis_server.url)
    with a.client:
        yield a
    a.serving.stop()


def _images(digits: LabeledBatch, n: int) -> list[bytes]:
    picks = [int(i) for c in range(4) for i in np.nonzero(digits.labels == c)[0][:n]]
    return [png(digits.images[i, ..., 0]) for i in picks]


def _top(api: Api, version: str, images: list[bytes]) -> list[str]:
    """What a version answers, straight from the loaded model (no HTTP)."""
    model = load_version(api.store, version)
    x = model_input([pixels(b, model.size, name="test") for b in images])
    return [model.class_names[int(i)] for i in np.argmax(model.logits(x), axis=1)]


def _classify(api: Api, images: list[bytes], **params: str) -> dict:  # type: ignore[type-arg]
    files = [("images", (f"{i}.png", b, "image/png")) for i, b in enumerate(images)]
    r = api.client.post("/classify", files=files, params={"top_k": "1", **params})
    assert r.status_code == 200, r.text
    return dict(r.json())


def test_a_pinned_request_answers_with_its_version_while_another_serves(
    own_api: Api, digits: LabeledBatch
) -> None:
    images = _images(digits, 2)
    served = _classify(own_api, images)
    assert served["version"] == "v0002"
    pinned = _classify(own_api, images, version="v0001")
    assert pinned["version"] == "v0001"
    tops = [r["predictions"][0]["label"] for r in pinned["results"]]
    assert tops == _top(own_api, "v0001", images)  # v0001's own answers
    assert set(tops) <= {"digit0", "digit1"}  # a version that knows only those
    assert _classify(own_api, images, version="v0003")["version"] == "v0003"  # torch only
    assert own_api.serving.model and own_api.serving.model.version == "v0002"  # still serving

    r = own_api.client.put("/admin/aliases/champion", json={"version": "v0001"}, headers=AUTH)
    assert r.status_code == 200, r.text
    assert (r.json()["from"], r.json()["to"]) == (None, "v0001")
    assert _classify(own_api, images, alias="champion")["version"] == "v0001"
    assert _classify(own_api, images, alias="serving")["version"] == "v0002"
    listed = own_api.client.get("/admin/aliases", headers=AUTH).json()
    assert listed == {"champion": "v0001", "serving": "v0002"}
    assert own_api.store.aliases.history()[-1].to == "v0001"  # audited

    files = [("images", ("a.png", images[0], "image/png"))]
    for params, code in [
        ({"version": "v0099"}, 404),
        ({"version": "../v1"}, 422),
        ({"alias": "nobody"}, 404),
        ({"alias": "Bad Name"}, 422),
        ({"version": "v0001", "alias": "champion"}, 422),
    ]:
        r = own_api.client.post("/classify", files=files, params=params)
        assert r.status_code == code, (params, r.text)
    r = own_api.client.put("/admin/aliases/serving", json={"version": "v0001"}, headers=AUTH)
    assert r.status_code == 400 and "janus activate" in r.json()["detail"]


def _wait_counts(client: redis.Redis, version: str, images: int) -> dict:  # type: ignore[type-arg]
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        counts = read_counts(client, version).get("v0002")
        if counts and counts["images"] >= images:
            return counts
        time.sleep(0.05)
    raise TimeoutError(f"shadow counts of {version} stayed {read_counts(client, version)}")


def test_shadow_counts_agree_with_what_the_two_versions_answer(
    own_api: Api, digits: LabeledBatch, redis_server: EmbeddedRedis
) -> None:
    client = redis.Redis.from_url(redis_server.url)
    clear_counts(client, "v0001")
    r = own_api.client.put(
        "/admin/shadow", json={"version": "v0001", "fraction": 1.0}, headers=AUTH
    )
    assert r.status_code == 200, r.text
    own_api.serving.swapper.check()  # the hot-swap loop reads refs/shadow
    own_api.serving.pinned.get("v0001")  # loaded up front: no image is skipped while it loads
    skipped = REGISTRY.get_sample_value("janus_shadow_skipped_total", {"version": "v0001"}) or 0.0

    images = _images(digits, 6)  # 24 images, 6 per class
    sent = 0
    for start in range(0, len(images), 4):  # one request at a time: each shadow task finishes
        answer = _classify(own_api, images[start : start + 4])
        assert answer["version"] == "v0002"  # the shadow never answers a request
        sent += 4
        _wait_counts(client, "v0001", sent)

    serving, candidate = _top(own_api, "v0002", images), _top(own_api, "v0001", images)
    expected_n = Counter(serving)
    expected_agree = Counter(s for s, c in zip(serving, candidate, strict=True) if s == c)
    counts = read_counts(client, "v0001")["v0002"]
    assert counts["images"] == len(images)
    assert counts["agreed"] == sum(expected_agree.values())
    for name, c in counts["per_class"].items():
        assert (c["images"], c["agreed"]) == (expected_n[name], expected_agree[name]), name
    assert 0 < counts["agreed"] < len(images)  # v0001 knows half the classes: a real test
    labels = {"version": "v0001", "serving": "v0002"}
    assert REGISTRY.get_sample_value("janus_shadow_agreed_total", labels) is not None
    after = REGISTRY.get_sample_value("janus_shadow_skipped_total", {"version": "v0001"}) or 0.0
    assert after == skipped

    shown = own_api.client.get("/admin/versions/v0001", headers=AUTH).json()
    assert shown["shadow"]["v0002"]["agreed"] == counts["agreed"]

    # promotion can require shadowing: enough images, but agreement below what is asked
    needs = {"reason": "t", "min_shadowed": 10, "min_agreement": 0.99}
    r = own_api.client.post("/admin/versions/v0001/activate", json=needs, headers=AUTH)
    assert r.status_code == 409 and "agreement" in r.json()["detail"]
    needs = {"reason": "t", "min_shadowed": 1000}
    r = own_api.client.post("/admin/versions/v0001/activate", json=needs, headers=AUTH)
    assert r.status_code == 409 and "shadowed 24 images" in r.json()["detail"]
    assert own_api.store.serving() == "v0002"

    r = own_api.client.delete("/admin/shadow", headers=AUTH)
    assert r.status_code == 200 and own_api.store.shadow() is None
    client.close()


def test_a_worker_loads_one_pinned_version_at_a_time_and_keeps_a_few(own_api: Api) -> None:
    store = own_api.store
    started, release = threading.Event(), threading.Event()

    def slow(version: str) -> LoadedModel:  # the real load, held until the test releases it
        started.set()
        release.wait(10)
        return load_version(store, version)

    pinned = PinnedVersions(store, partial(load_recorded, store, slow), size=1, alias_ttl_s=1)
    first = threading.Thread(target=pinned.get, args=("v0001",))
    first.start()
    assert started.wait(10)
    with pytest.raises(Busy):  # a second load meanwhile is refused, not queued
        pinned.get("v0003")
    release.set()
    first.join(10)
    assert pinned.cached("v0001") is not None
    assert pinned.get("v0003").version == "v0003"  # size 1: v0001 makes way
    assert pinned.cached("v0001") is None


def test_a_pinned_version_that_does_not_load_is_refused_and_quarantined(
    own_api: Api, digits: LabeledBatch
) -> None:
    onnx = own_api.store._backend._abs("versions/v0001/model.onnx")  # type: ignore[attr-defined]
    Path(onnx).write_bytes(Path(onnx).read_bytes()[:1000])
    files = [("images", ("a.png", _images(digits, 1)[0], "image/png"))]
    r = own_api.client.post("/classify", files=files, params={"version": "v0001"})
    assert r.status_code == 409 and "does not serve" in r.json()["detail"], r.text
    assert "v0001" in own_api.store.quarantined(), r.text
    r = own_api.client.post("/classify", files=files, params={"version": "v0001"})
    assert r.status_code == 409 and "quarantined" in r.json()["detail"]
    assert _classify(own_api, _images(digits, 1))["version"] == "v0002"  # serving is untouched


def test_the_openapi_document_lists_pinning_aliases_shadow_and_the_v2_routes(api: Api) -> None:
    spec = api.client.get("/api/openapi.json").json()
    classify = {p["name"] for p in spec["paths"]["/classify"]["post"]["parameters"]}
    assert {"version", "alias", "top_k"} <= classify
    for path in ("/admin/aliases/{name}", "/admin/shadow", "/admin/evalsets"):
        assert path in spec["paths"], path
    assert "min_shadowed" in str(spec["components"]["schemas"]["ActivateBody"])
    infer = spec["paths"]["/v2/models/{name}/versions/{version}/infer"]["post"]
    assert "application/octet-stream" in infer["requestBody"]["content"]


def test_serving_reads_only_the_manifest_and_the_onnx_model(own_api: Api) -> None:
    """A damaged learner file (the subspace state, the largest) does not stop ONNX serving,
    which never reads it; torch, which rebuilds the model from every file, refuses it; and
    `janus verify` still names it."""
    from adapters_store import IntegrityError, verify_store
    from adapters_store.manifest import SUBSPACE

    store = own_api.store
    path = Path(store._backend._abs(f"versions/v0001/{SUBSPACE}"))  # type: ignore[attr-defined]
    path.write_bytes(b"x" + path.read_bytes()[1:])
    model = load_version(store, "v0001")
    assert model.version == "v0001" and model.engine.startswith("onnxruntime")
    with pytest.raises(IntegrityError, match=SUBSPACE):
        load_version(store, "v0001", engine="torch")
    problems = verify_store(store).problems
    assert [(p.version, p.file) for p in problems] == [("v0001", SUBSPACE)]


def test_a_golden_set_uploaded_as_an_archive_is_kept(
    own_api: Api, digits: LabeledBatch, tmp_path: Path
) -> None:
    import io
    import tarfile

    from learner.data import write_class_folders

    picks = np.concatenate([np.nonzero(digits.labels == c)[0][:2] for c in (0, 1)])
    folder = write_class_folders(
        digits.subset(picks).select_classes(["digit0", "digit1"]), tmp_path / "golden"
    )
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        tf.add(folder, arcname="golden")
    files = {"dataset": ("golden.tar.gz", buf.getvalue(), "application/gzip")}
    r = own_api.client.post("/admin/evalsets", files=files, headers=AUTH)
    assert r.status_code == 200, r.text
    assert r.json()["kind"] == "golden" and r.json()["classes"] == {"digit0": 2, "digit1": 2}
    listed = own_api.client.get("/admin/evalsets", headers=AUTH).json()
    assert [s["digest"] for s in listed] == [r.json()["digest"]]
    r = own_api.client.post("/admin/evalsets", data={"x": "1"}, headers=AUTH)
    assert r.status_code == 400 and "`dataset`" in r.json()["detail"]
