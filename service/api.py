"""The HTTP API: `/classify` and the admin routes, as a FastAPI app mounted in the BentoML service.

    POST /classify                     multipart images (field `images`, one or several) or JSON
                                       {"images": [base64, ...], "top_k": 3}; `?version=ID` or
                                       `?alias=NAME` answers with that version
    POST /admin/learn                  JSON LearnRequest (dataset path), or multipart: an archive
                                       in `dataset` and the other LearnRequest fields as JSON in
                                       `request` → 202 {"job_id"}
    GET  /admin/jobs, /admin/jobs/ID   job state and progress;  POST /admin/jobs/ID/cancel
    GET  /admin/versions, /admin/versions/ID (with its evaluation, aliases and shadow counts)
    POST /admin/versions/ID/activate, /admin/rollback
    GET  /admin/history
    GET  /admin/aliases;  PUT, DELETE /admin/aliases/NAME
    GET, PUT, DELETE /admin/shadow     the version shadowing the serving one, and its counts
    GET  /admin/evalsets;  POST /admin/evalsets (a golden set: an archive in `dataset`)
    /v2/...                            the Open Inference Protocol (`service.v2`)
    GET  /console                      the web console (`service.console`): public page, its
                                       data from the admin routes with the token typed in

Admin routes need `Authorization: Bearer $JANUS_ADMIN_TOKEN`; classify needs
`$JANUS_CLASSIFY_TOKEN` (or the admin token) when that is set. Missing token → 401, wrong → 403.
"""

import hashlib
import json
import tempfile
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.datastructures import FormData, UploadFile

from adapters_store import (
    AuditEntry,
    NotFound,
    NothingToRollBack,
    Quarantined,
    Rejected,
    StoreError,
)
from adapters_store.cli import check_shadowed
from learner.jobs.client import JobStatus, LearnRequest, cancel, list_jobs, status, submit
from service import inference
from service.auth import Credentials, check, check_classify
from service.console import console_router
from service.core import NoQueue, Serving
from service.images import ImageError, decode_base64
from service.metrics import exposition
from service.runtime import check_in_child
from service.shadow import counts_at
from service.swap import announce_change, announce_move
from service.v2 import create_v2

GetServing = Callable[[], Serving]


class Prediction(BaseModel):
    label: str
    score: float


class ImageResult(BaseModel):
    predictions: list[Prediction]


class ClassifyResponse(BaseModel):
    version: str = Field(description="the model version that answered every image")
    results: list[ImageResult]


class ClassifyJSON(BaseModel):
    model_config = ConfigDict(extra="forbid")
    images: list[str] = Field(
        min_length=1, max_length=1024, description="base64 images or data: URLs"
    )
    top_k: int | None = Field(None, ge=1)


class ChangeBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    actor: str | None = Field(None, max_length=200)
    reason: str = Field("", max_length=2000)


class ActivateBody(ChangeBody):
    force: bool = Field(
        False,
        description="serve a version the gate rejected or a quarantined one (clears its "
        "quarantine); needs a reason",
    )
    min_shadowed: int = Field(
        0, ge=0, description="refuse unless the version shadowed at least this many images"
    )
    min_agreement: float = Field(
        0.0, ge=0, le=1, description="refuse unless it agreed with the serving version this often"
    )


class AliasBody(ChangeBody):
    version: str = Field(description="the version the alias names")


class ShadowBody(ChangeBody):
    version: str = Field(description="the version that shadows the serving one")
    fraction: float = Field(0.1, gt=0, le=1, description="share of classify requests mirrored")


class RollbackBody(ChangeBody):
    to: str | None = Field(None, description="version to serve; default the previous one")


class LearnAccepted(BaseModel):
    job_id: str
    state: str
    dataset: str


def _top(probs: np.ndarray, names: tuple[str, ...], k: int) -> list[ImageResult]:
    k = min(k, probs.shape[1])
    order = np.argsort(-probs, axis=1)[:, :k]  # (B, k)
    return [
        ImageResult(predictions=[Prediction(label=names[j], score=float(p[j])) for j in row])
        for p, row in zip(probs, order, strict=True)
    ]


_CLASSIFY_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "images": {
                            "type": "array",
                            "items": {"type": "string", "format": "binary"},
                        },
                        "top_k": {"type": "integer"},
                    },
                    "required": ["images"],
                }
            },
            "application/json": {"schema": ClassifyJSON.model_json_schema()},
        },
    }
}

_LEARN_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": LearnRequest.model_json_schema()},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "dataset": {"type": "string", "format": "binary"},
                        "request": {"type": "string", "description": "LearnRequest JSON"},
                    },
                    "required": ["dataset"],
                }
            },
        },
    }
}


_EVALSET_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {"dataset": {"type": "string", "format": "binary"}},
                    "required": ["dataset"],
                }
            }
        },
    }
}

MAX_GOLDEN_IMAGES = 10_000
"""Most images one golden evaluation set may hold."""


def _bad_json(err: Exception) -> HTTPException:
    if isinstance(err, ValidationError):
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in err.errors()
        )
        return HTTPException(422, f"invalid request: {problems}")
    return HTTPException(400, f"invalid JSON body: {err}")


async def _read_images(request: Request, serving: Serving) -> tuple[list[bytes], int | None]:
    """The raw images and top_k of a multipart or JSON classify request."""
    s = serving.settings
    media = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
    if media == "multipart/form-data":
        try:
            form = await request.form(max_files=s.max_images, max_fields=8)
        except Exception as err:  # starlette raises its own MultiPartException / HTTPException
            raise HTTPException(400, f"invalid multipart body: {err}") from None
        files = [f for f in form.getlist("images") + form.getlist("image")]
        data = []
        for f in files:
            if not isinstance(f, UploadFile):
                raise HTTPException(400, "field `images` must carry files (multipart uploads)")
            data.append(await f.read())
        raw_k = form.get("top_k")
        try:
            top_k = int(str(raw_k)) if raw_k is not None else None
        except ValueError:
            raise HTTPException(422, f"top_k must be an integer, got {raw_k!r}") from None
        return data, top_k
    if media != "application/json":
        raise HTTPException(
            415, f"content type {media!r}: send multipart/form-data or application/json"
        )
    try:  # off the event loop: a 16 MB body of tiny items takes a while to validate
        body = await run_in_threadpool(ClassifyJSON.model_validate_json, await request.body())
    except ValidationError as err:
        if any(e["type"] == "json_invalid" for e in err.errors()):
            raise HTTPException(400, f"invalid JSON body: {err.errors()[0]['msg']}") from None
        raise _bad_json(err) from None
    return [decode_base64(text, i) for i, text in enumerate(body.images)], body.top_k


def create_api(get_serving: GetServing) -> FastAPI:
    """The FastAPI app; `get_serving()` returns this worker's `Serving`."""
    app = FastAPI(
        title="janus-serve",
        description="Continual-learning image classification with hot-swapped versions",
        version="0.1.0",
        docs_url="/api/docs",
        openapi_url="/api/openapi.json",
    )
    Svc = Annotated[Serving, Depends(get_serving)]

    def classify_auth(serving: Svc, creds: Credentials) -> None:
        check_classify(serving.settings, creds, "classify")

    def admin_auth(request: Request, serving: Svc, creds: Credentials) -> None:
        tokens = serving.settings.admin_tokens(request.method)
        if not tokens:
            raise HTTPException(403, "the admin API is off: set JANUS_ADMIN_TOKEN to enable it")
        check(creds, tokens, "the admin API")

    @app.exception_handler(ImageError)
    async def _image_error(_: Request, exc: ImageError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=exc.status)

    @app.exception_handler(NotFound)
    async def _not_found(_: Request, exc: NotFound) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=404)

    @app.exception_handler(StoreError)
    async def _store_error(_: Request, exc: StoreError) -> JSONResponse:
        code = 409 if isinstance(exc, NothingToRollBack | Quarantined | Rejected) else 400
        return JSONResponse({"detail": str(exc)}, status_code=code)

    @app.exception_handler(NoQueue)
    async def _no_queue(_: Request, exc: NoQueue) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=503)

    @app.post(
        "/classify",
        response_model=ClassifyResponse,
        dependencies=[Depends(classify_auth)],
        openapi_extra=_CLASSIFY_BODY,
        summary="Top-k labels of one or several images, and the version that answered",
    )
    async def classify(
        request: Request,
        serving: Svc,
        top_k: int | None = None,
        version: str | None = None,
        alias: str | None = None,
    ) -> Any:
        async with inference.admitted(serving) as start:  # before the body is read
            return await _classify(request, serving, top_k, start, version, alias)

    app.include_router(_admin_router(Svc), dependencies=[Depends(admin_auth)])
    app.include_router(create_v2(get_serving))
    app.include_router(console_router())

    @app.get("/metrics", include_in_schema=False)
    def metrics() -> Response:
        """Prometheus' text format: every worker process's `janus_*` metrics."""
        return Response(exposition(), media_type=CONTENT_TYPE_LATEST)

    return app


async def _classify(
    request: Request,
    serving: Serving,
    top_k: int | None,
    start: float,
    version: str | None = None,
    alias: str | None = None,
) -> Any:
    """One classify request: read it, check the counts, decode within the request's budget (in
    one of the worker's decode slots), infer in the batcher (with the serving version, or the one
    the request names); then maybe mirror it to the shadowed version."""
    pinned = version is not None or alias is not None
    s = serving.settings
    try:
        data, body_k = await _read_images(request, serving)
        k = next((v for v in (body_k, top_k) if v is not None), 5)
        if not 1 <= k <= s.max_top_k:
            raise HTTPException(422, f"top_k must be between 1 and {s.max_top_k}, got {k}")
        inference.check_count(serving, len(data), "send files in the multipart field `images`")
        model = await inference.model_for(serving, version, alias)
        x = await inference.decode(serving, data, model)
        logits = await inference.run(serving, model, x, pinned)
        answer = ClassifyResponse(
            version=model.version, results=_top(inference.softmax(logits), model.class_names, k)
        )
    except inference.FAILURES as err:
        inference.count_failure(serving, err)
        raise
    inference.count_success(serving, model.version, len(data), start)
    return answer


def _announce(serving: Serving, message: dict[str, Any]) -> None:
    announce_change(serving.redis_url(), message)


def _moved(serving: Serving, entry: AuditEntry) -> None:
    announce_move(serving.redis_url(), entry)


def _actor(claimed: str | None) -> str:
    """The audit actor of an admin request: the admin token is who acted (one token, one
    identity); a name the body gives is recorded as a claim, not as the actor."""
    return "admin-token" if not claimed else f"admin-token (says {claimed[:100]!r})"


def _admin_router(Svc: Any) -> APIRouter:
    router = APIRouter(prefix="/admin", tags=["admin"])

    @router.post("/learn", status_code=202, response_model=LearnAccepted, openapi_extra=_LEARN_BODY)
    async def learn(request: Request, serving: Svc) -> LearnAccepted:
        """Queue a learn job on an uploaded archive, or on a dataset path the workers can read."""
        media = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if media == "multipart/form-data":
            fields, ref = await _staged_upload(request, serving)
        else:
            try:
                fields = json.loads(await request.body() or b"null")
            except json.JSONDecodeError as err:
                raise _bad_json(err) from None
            if not isinstance(fields, dict):
                raise HTTPException(422, "send a JSON object with at least `dataset`")
            ref = str(fields.get("dataset", ""))
        try:
            actor = _actor(str(fields["actor"]) if fields.get("actor") else None)
            req = LearnRequest.model_validate({**fields, "dataset": ref, "actor": actor})
        except ValidationError as err:
            raise _bad_json(err) from None
        job_id = await run_in_threadpool(submit, serving.celery(), req)
        return LearnAccepted(job_id=job_id, state="queued", dataset=req.dataset)

    @router.get("/jobs", response_model=list[JobStatus])
    def jobs(serving: Svc, limit: int = 20) -> list[JobStatus]:
        """The most recent learn jobs, newest first."""
        return list_jobs(serving.celery(), max(1, min(limit, 500)))

    @router.get("/jobs/{job_id}", response_model=JobStatus)
    def job(job_id: str, serving: Svc) -> JobStatus:
        """A job's state, progress while running, version on success, error on failure."""
        found = status(serving.celery(), job_id)
        if found.state == "unknown":
            raise HTTPException(404, f"no job {job_id}; list jobs with GET /admin/jobs")
        return found

    @router.post("/jobs/{job_id}/cancel", response_model=JobStatus)
    def cancel_job(job_id: str, serving: Svc) -> JobStatus:
        """Ask a queued or running job to stop."""
        try:
            return cancel(serving.celery(), job_id)
        except ValueError as err:
            raise HTTPException(404, str(err)) from None

    @router.get("/versions")
    def versions(serving: Svc) -> list[dict[str, Any]]:
        """Every published version, oldest first, with which one serves."""
        store = serving.store
        current, quarantined, aliases = store.serving(), store.quarantined(), store.aliases.all()
        return [
            {
                **m.model_dump(mode="json"),
                "serving": m.id == current,
                "quarantined": quarantined.get(m.id),
                "rejected": m.rejected,
                "aliases": sorted(a for a, v in aliases.items() if v == m.id),
            }
            for m in store.versions()
        ]

    @router.get("/versions/{version_id}")
    def version(version_id: str, serving: Svc) -> dict[str, Any]:
        """One version's manifest (its evaluation against the serving version, the gate's
        verdict), lineage, aliases, and how it agreed with serving versions while it shadowed."""
        store = serving.store
        m = store.get(version_id)
        return {
            "manifest": m.model_dump(mode="json"),
            "lineage": [v.id for v in store.lineage(version_id)],
            "serving": store.serving() == m.id,
            "quarantined": store.quarantined().get(m.id),
            "rejected": m.rejected,
            "aliases": sorted(a for a, v in store.aliases.all().items() if v == m.id),
            "shadow": counts_at(serving.redis_url(), m.id),
        }

    @router.post("/versions/{version_id}/activate")
    def activate(version_id: str, serving: Svc, body: ActivateBody | None = None) -> dict[str, Any]:
        """Serve a version (every worker swaps to it within seconds)."""
        b = body or ActivateBody()
        if b.min_shadowed or b.min_agreement:
            _check_shadowed(serving, version_id, b.min_shadowed, b.min_agreement)
        entry = serving.store.activate(  # test-loaded in a child process first
            version_id,
            actor=_actor(b.actor),
            reason=b.reason,
            force=b.force,
            test_load=partial(check_in_child, engine=serving.settings.engine),
        )
        _moved(serving, entry)
        return entry.model_dump(mode="json", by_alias=True)

    @router.post("/rollback")
    def rollback(serving: Svc, body: RollbackBody | None = None) -> dict[str, Any]:
        """Serve the previously serving version, or `to`."""
        b = body or RollbackBody()
        entry = serving.store.rollback(b.to, actor=_actor(b.actor), reason=b.reason)
        _moved(serving, entry)
        return entry.model_dump(mode="json", by_alias=True)

    @router.get("/history")
    def history(serving: Svc) -> list[dict[str, Any]]:
        """Every change of the serving version, oldest first."""
        return [e.model_dump(mode="json", by_alias=True) for e in serving.store.history()]

    @router.get("/aliases")
    def aliases(serving: Svc) -> dict[str, str]:
        """Every alias and the version it names (`serving` is the serving pointer)."""
        current = serving.store.serving()
        return {**serving.store.aliases.all(), **({"serving": current} if current else {})}

    @router.put("/aliases/{name}")
    def set_alias(name: str, body: AliasBody, serving: Svc) -> dict[str, Any]:
        """Point an alias at a version (recorded in log/aliases.jsonl)."""
        entry = serving.store.set_alias(
            name, body.version, actor=_actor(body.actor), reason=body.reason
        )
        return entry.model_dump(mode="json", by_alias=True)

    @router.delete("/aliases/{name}")
    def delete_alias(name: str, serving: Svc, body: ChangeBody | None = None) -> dict[str, Any]:
        """Remove an alias."""
        b = body or ChangeBody()
        entry = serving.store.set_alias(name, None, actor=_actor(b.actor), reason=b.reason)
        return entry.model_dump(mode="json", by_alias=True)

    @router.get("/shadow")
    def shadow(serving: Svc) -> dict[str, Any]:
        """The version shadowing the serving one (null if none), and its agreement counts."""
        current = serving.store.shadow()
        return {
            "shadow": current.model_dump(mode="json") if current else None,
            "counts": counts_at(serving.redis_url(), current.version) if current else None,
        }

    @router.put("/shadow")
    def set_shadow(body: ShadowBody, serving: Svc) -> dict[str, Any]:
        """Mirror a share of classify traffic to a version, off the request path."""
        current = serving.store.set_shadow(
            body.version, body.fraction, actor=_actor(body.actor), reason=body.reason
        )
        _announce(serving, {"event": "shadow-changed", "version": body.version})
        return {"shadow": current.model_dump(mode="json") if current else None}

    @router.delete("/shadow")
    def stop_shadow(serving: Svc) -> dict[str, Any]:
        """Stop shadowing (the counts are kept)."""
        serving.store.set_shadow(None, actor="admin-token")
        _announce(serving, {"event": "shadow-changed", "version": None})
        return {"shadow": None}

    @router.get("/evalsets")
    def evalsets(serving: Svc) -> list[dict[str, Any]]:
        """Every evaluation set: learn jobs' held-out samples and users' golden sets."""
        return [info.model_dump(mode="json") for info in serving.store.evalsets.sets()]

    @router.post("/evalsets", openapi_extra=_EVALSET_BODY)
    async def add_evalset(request: Request, serving: Svc) -> dict[str, Any]:
        """Attach a golden evaluation set: an archive of class folders in the file `dataset`."""
        return await _golden_upload(request, serving)

    return router


def _check_shadowed(serving: Serving, version: str, images: int, agreement: float) -> None:
    """Refuses (409) to promote a version that has not shadowed the serving one enough."""
    counts = counts_at(serving.redis_url(), version)
    problem = check_shadowed(counts, version, serving.store.serving(), images, agreement)
    if problem is not None:
        raise HTTPException(503 if counts is None else 409, problem)


async def _upload(request: Request, max_fields: int, hint: str) -> tuple[FormData, UploadFile]:
    """A multipart admin request's form and its file `dataset`."""
    try:
        form = await request.form(max_files=1, max_fields=max_fields)
    except Exception as err:  # starlette raises its own MultiPartException / HTTPException
        raise HTTPException(400, f"invalid multipart body: {err}") from None
    upload = form.get("dataset")
    if not isinstance(upload, UploadFile):
        raise HTTPException(400, f"put {hint} in the file `dataset`")
    return form, upload


async def _receive(upload: UploadFile, path: Path, digest: Any = None) -> None:
    """The upload to disk a chunk at a time (hashed on the way into `digest`, if given)."""
    with open(path, "wb") as out:
        while chunk := await upload.read(1 << 20):
            if digest is not None:
                digest.update(chunk)
            out.write(chunk)


async def _golden_upload(request: Request, serving: Serving) -> dict[str, Any]:
    from learner.data import DataError
    from learner.jobs.evaluation import golden_set

    _, upload = await _upload(request, 2, "the archive (zip, tar, tar.gz) of class folders")
    suffix = "".join(Path(upload.filename or "set.tar.gz").suffixes[-2:])
    with tempfile.TemporaryDirectory(prefix="janus-evalset-") as tmp:
        path = Path(tmp) / f"golden{suffix}"
        await _receive(upload, path)
        try:
            info = await run_in_threadpool(
                partial(
                    golden_set,
                    serving.store,
                    path,
                    max_bytes=serving.jobs.max_dataset_bytes,
                    max_images=MAX_GOLDEN_IMAGES,
                )
            )
        except DataError as err:
            raise HTTPException(422, str(err)) from None
    return info.model_dump(mode="json")


async def _staged_upload(request: Request, serving: Serving) -> tuple[dict[str, Any], str]:
    """A multipart learn request: the archive staged in the store, and the other fields."""
    from learner.jobs.intake import stage_dataset

    form, upload = await _upload(request, 4, "the archive (zip, tar, tar.gz, npz)")
    raw = form.get("request")
    try:
        fields = json.loads(str(raw)) if raw else {}
    except json.JSONDecodeError as err:
        raise HTTPException(400, f"field `request` is not valid JSON: {err}") from None
    if not isinstance(fields, dict):
        raise HTTPException(422, "field `request` must be a JSON object of LearnRequest fields")
    with tempfile.TemporaryDirectory(prefix="janus-upload-") as tmp:
        path, digest = Path(tmp) / "dataset", hashlib.sha256()
        await _receive(upload, path, digest)
        ref = await run_in_threadpool(
            stage_dataset, path, serving.jobs.store_uri, digest=digest.hexdigest()
        )
    return fields, ref
