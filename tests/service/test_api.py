"""The HTTP API in-process (no bentoml serve): classify, limits and bad input, auth, admin reads."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image

from learner.data import LabeledBatch
from tests.service.conftest import ADMIN, Api, make_api, png


def _digit(digits: LabeledBatch, label: int) -> bytes:
    index = int(np.nonzero(digits.labels == label)[0][0])
    return png(digits.images[index, ..., 0])


def test_classify_multipart_several_images(api: Api, digits: LabeledBatch) -> None:
    files = [("images", (f"{i}.png", _digit(digits, i), "image/png")) for i in (0, 2, 3)]
    r = api.client.post("/classify", files=files, data={"top_k": "2"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["version"] == "v0002"
    assert len(body["results"]) == 3
    for result in body["results"]:
        preds = result["predictions"]
        assert len(preds) == 2
        assert {p["label"] for p in preds} <= {"digit0", "digit1", "digit2", "digit3"}
        assert preds[0]["score"] >= preds[1]["score"]


def test_classify_base64_json_and_data_url(api: Api, digits: LabeledBatch) -> None:
    raw = base64.b64encode(_digit(digits, 1)).decode()
    r = api.client.post(
        "/classify", json={"images": [raw, f"data:image/png;base64,{raw}"], "top_k": 4}
    )
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert results[0] == results[1]
    assert sum(p["score"] for p in results[0]["predictions"]) == pytest.approx(1.0, abs=1e-4)


def test_readiness_detail(api: Api) -> None:
    r = api.client.get("/readyz")
    assert r.status_code == 200
    assert r.json()["version"] == "v0002"
    engine = r.json()["engine"]
    assert engine == "onnxruntime:CPUExecutionProvider"  # the execution provider it runs on
    from prometheus_client import REGISTRY

    labels = {"version": "v0002", "engine": engine}
    assert REGISTRY.get_sample_value("janus_serving_version", labels) == 1  # /metrics says so too


def test_readiness_detail_is_for_admins_only(api: Api) -> None:
    public = api.client.get("/readyz").json()
    assert set(public) == {"ready", "version", "engine"}  # no pid, pointer or last error
    detail = api.client.get("/readyz", headers={"Authorization": f"Bearer {ADMIN}"}).json()
    assert {"pid", "serving_pointer", "last_error"} <= set(detail)
    wrong = api.client.get("/readyz", headers={"Authorization": "Bearer wrong-token-wrong-to"})
    assert "pid" not in wrong.json()


def test_not_ready_without_a_version(tmp_path) -> None:
    a = make_api(tmp_path / "empty-store")
    assert a.client.get("/readyz").status_code == 503
    r = a.client.post("/classify", files=[("images", ("a.png", png(np.zeros((8, 8), np.uint8))))])
    assert r.status_code == 503
    a.serving.stop()


def test_body_over_limit_is_413_before_decoding(api: Api) -> None:
    r = api.client.post(
        "/classify", content=b"x" * 300_000, headers={"content-type": "application/json"}
    )
    assert r.status_code == 413
    assert "above the limit" in r.json()["detail"]

    def chunks():  # no Content-Length: counted while reading
        for _ in range(40):
            yield b"y" * 10_000

    r = api.client.post("/classify", content=chunks(), headers={"content-type": "text/plain"})
    assert r.status_code == 413


def test_pixel_limit_decompression_bomb(api: Api) -> None:
    big = np.zeros((400, 400), np.uint8)  # 160k pixels > 100k limit; a small PNG
    r = api.client.post("/classify", files=[("images", ("big.png", png(big), "image/png"))])
    assert r.status_code == 413
    assert "pixels" in r.json()["detail"]


def test_the_request_decode_budget_is_checked_from_headers_before_any_decoding(
    version_store,
) -> None:
    a = make_api(version_store, max_pixels=100_000, max_request_pixels=150_000)
    fine = png(np.zeros((300, 300), np.uint8))  # 90k pixels: each alone is under max_pixels
    broken = fine[: len(fine) // 2]  # its header parses, its pixels do not
    with a.client:
        r = a.client.post(
            "/classify", files=[("images", ("a.png", broken)), ("images", ("b.png", fine))]
        )
        assert r.status_code == 413, r.text  # the budget, not the corrupt pixels decoded first
        assert "JANUS_MAX_REQUEST_PIXELS" in r.json()["detail"]
        r = a.client.post("/classify", files=[("images", ("a.png", broken))])
        assert r.status_code == 400 and "corrupt" in r.json()["detail"]  # alone: decoded, refused
    a.serving.stop()


def test_an_image_declaring_too_many_frames_is_refused(version_store) -> None:
    frames = [Image.fromarray(np.full((16, 16), 40 * i, np.uint8)) for i in range(3)]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:])
    a = make_api(version_store, max_frames=2)
    with a.client:
        r = a.client.post("/classify", files=[("images", ("a.gif", buf.getvalue()))])
        assert r.status_code == 413 and "JANUS_MAX_FRAMES" in r.json()["detail"]
    a.serving.stop()
    b = make_api(version_store, max_frames=3)
    with b.client:  # within the limit: the first frame answers
        assert b.client.post("/classify", files=[("images", ("a.gif", buf.getvalue()))]).is_success
    b.serving.stop()


def test_a_full_worker_answers_503_with_retry_after_before_reading(
    api: Api, digits: LabeledBatch
) -> None:
    api.serving.inflight = api.serving.settings.max_inflight  # as if that many were in flight
    try:
        r = api.client.post("/classify", files=[("images", ("d.png", _digit(digits, 1)))])
    finally:
        api.serving.inflight = 0
    assert r.status_code == 503 and r.headers["retry-after"] == "1"
    assert "JANUS_MAX_INFLIGHT" in r.json()["detail"]
    r = api.client.post("/classify", files=[("images", ("d.png", _digit(digits, 1)))])
    assert r.status_code == 200 and api.serving.inflight == 0  # released after each request


def test_format_outside_allowlist_is_415(tmp_path, version_store) -> None:
    a = make_api(version_store, image_formats=("PNG",))
    buf = io.BytesIO()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(buf, format="JPEG")
    r = a.client.post("/classify", files=[("images", ("a.jpg", buf.getvalue(), "image/jpeg"))])
    assert r.status_code == 415
    assert "JPEG" in r.json()["detail"]
    r = a.client.post("/classify", files=[("images", ("a.txt", b"hello, not an image"))])
    assert r.status_code == 415
    r = a.client.post("/classify", content=b"a=b", headers={"content-type": "text/plain"})
    assert r.status_code == 415
    a.serving.stop()


def test_corrupt_image_names_the_problem(api: Api, digits: LabeledBatch) -> None:
    data = _digit(digits, 0)
    truncated = data[: len(data) // 2]
    r = api.client.post("/classify", files=[("images", ("t.png", truncated, "image/png"))])
    assert r.status_code == 400
    assert "image 0" in r.json()["detail"] and "corrupt" in r.json()["detail"]


@pytest.mark.parametrize(
    ("body", "status", "words"),
    [
        (b"{not json", 400, "invalid JSON"),
        (b'{"images": "abc"}', 422, "images"),
        (b'{"images": ["%%%"]}', 400, "base64"),
        (b'{"images": ["aGk="], "extra": 1}', 422, "extra"),
    ],
)
def test_bad_json_names_the_problem(api: Api, body: bytes, status: int, words: str) -> None:
    r = api.client.post("/classify", content=body, headers={"content-type": "application/json"})
    assert r.status_code == status, r.text
    assert words in r.json()["detail"]


def test_top_k_out_of_range(api: Api, digits: LabeledBatch) -> None:
    files = [("images", ("a.png", _digit(digits, 0), "image/png"))]
    assert api.client.post("/classify?top_k=0", files=files).status_code == 422
    assert api.client.post("/classify?top_k=999", files=files).status_code == 422


def test_admin_token_missing_401_wrong_403(api: Api) -> None:
    assert api.client.get("/admin/versions").status_code == 401
    bad = {"Authorization": "Bearer wrong-token-wrong-token"}
    assert api.client.get("/admin/versions", headers=bad).status_code == 403
    ok = {"Authorization": f"Bearer {ADMIN}"}
    r = api.client.get("/admin/versions", headers=ok)
    assert r.status_code == 200
    assert [v["id"] for v in r.json()] == ["v0001", "v0002", "v0003"]
    assert [v["serving"] for v in r.json()] == [False, True, False]


def test_admin_requests_without_the_token_are_refused_by_the_gate(api: Api) -> None:
    body = {"reason": "x" * 100, "unknown_field": 1}  # would be a 422 if it were read
    assert api.client.post("/admin/rollback", json=body).status_code == 401
    bad = {"Authorization": "Bearer wrong-token-wrong-token"}
    r = api.client.post("/admin/versions/v0001/activate", json=body, headers=bad)
    assert r.status_code == 403 and "not valid" in r.json()["detail"]
    ok = {"Authorization": f"Bearer {ADMIN}"}
    r = api.client.post("/admin/rollback", json=body, headers=ok)
    assert r.status_code == 422  # with the token, the body is read and checked


def test_a_read_only_admin_token_reads_and_cannot_change(version_store, tmp_path) -> None:
    import shutil

    root = tmp_path / "store"
    shutil.copytree(version_store, root)
    reader = "reader-token-0123456789"
    a = make_api(root, admin_read_token=reader)
    read = {"Authorization": f"Bearer {reader}"}
    with a.client:
        assert a.client.get("/admin/versions", headers=read).status_code == 200
        assert "pid" in a.client.get("/readyz", headers=read).json()
        r = a.client.post("/admin/rollback", headers=read, json={})
        assert r.status_code == 403 and a.store.serving() == "v0002"  # nothing moved
        admin = {"Authorization": f"Bearer {ADMIN}"}
        r = a.client.post("/admin/rollback", headers=admin, json={"actor": "mallory"})
        assert r.status_code == 200, r.text
    entry = a.store.history()[-1]
    assert entry.actor == "admin-token (says 'mallory')"  # the token acted; the name is a claim
    a.serving.stop()


def test_classify_token(version_store, digits: LabeledBatch) -> None:
    a = make_api(version_store, classify_token="classify-token-0123456789")
    files = [("images", ("a.png", _digit(digits, 0), "image/png"))]
    assert a.client.post("/classify", files=files).status_code == 401
    wrong = {"Authorization": "Bearer nope-nope-nope-nope"}
    assert a.client.post("/classify", files=files, headers=wrong).status_code == 403
    for token in ("classify-token-0123456789", ADMIN):
        h = {"Authorization": f"Bearer {token}"}
        assert a.client.post("/classify", files=files, headers=h).status_code == 200
    a.serving.stop()


def test_admin_version_history_and_openapi(api: Api) -> None:
    ok = {"Authorization": f"Bearer {ADMIN}"}
    r = api.client.get("/admin/versions/v0002", headers=ok)
    assert r.json()["lineage"] == ["v0002", "v0001"]
    assert api.client.get("/admin/versions/v0099", headers=ok).status_code == 404
    assert api.client.get("/admin/versions/bad..id", headers=ok).status_code in (400, 404)
    assert [e["to"] for e in api.client.get("/admin/history", headers=ok).json()][-1] == "v0002"
    paths = api.client.get("/api/openapi.json").json()["paths"]
    assert {"/classify", "/admin/learn", "/admin/rollback", "/admin/history"} <= set(paths)


def test_learn_without_redis_is_503(api: Api) -> None:
    ok = {"Authorization": f"Bearer {ADMIN}"}
    r = api.client.post("/admin/learn", json={"dataset": "/nowhere"}, headers=ok)
    assert r.status_code == 503
    assert "JANUS_REDIS_URL" in r.json()["detail"]


def test_activate_test_loads_in_a_child_and_refuses_a_version_that_does_not_load(
    version_store, tmp_path, digits: LabeledBatch, capsys
) -> None:
    """A version whose files match their digests but whose model does not parse: `activate`
    (API and CLI) loads it in a child process first, refuses it with the reason and quarantines
    it; the pointer does not move."""
    import shutil

    from adapters_store import open_store
    from learner.config import LoRAConfig, TrainConfig
    from learner.jobs.versioning import load_state, publish_state
    from learner.train import learn_task
    from service.cli import main

    root = tmp_path / "store"
    shutil.copytree(version_store, root)
    store = open_store(root)
    cfg = TrainConfig(epochs=1, design_samples=32, lora=LoRAConfig(rank=4))
    result = learn_task(load_state(store, "v0001"), digits.select_classes(["digit7"]), cfg)
    bad = publish_state(
        store, result.state, cfg, parent="v0001", data_digest="sha256:bad",
        metrics=result.metrics, onnx=b"this is not an ONNX model",
    )  # fmt: skip
    assert main(["activate", bad.id, "--store", str(root)]) == 1
    err = capsys.readouterr().err
    assert f"{bad.id} does not load" in err and "--force" in err
    assert store.serving() == "v0002" and bad.id in store.quarantined()
    store.release(bad.id)
    a = make_api(root)
    with a.client:
        admin = {"Authorization": f"Bearer {ADMIN}"}
        r = a.client.post(f"/admin/versions/{bad.id}/activate", headers=admin, json={})
        assert r.status_code == 409 and "does not load" in r.json()["detail"]
        assert store.serving() == "v0002" and bad.id in store.quarantined()
        r = a.client.post("/admin/versions/v0001/activate", headers=admin, json={})
        assert r.status_code == 200, r.text  # a good version passes the test load
    a.serving.stop()
