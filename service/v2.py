"""The Open Inference Protocol (KServe "V2", as Triton, KServe, MLServer and TorchServe answer it)
over HTTP/REST, beside `/classify`, so existing clients (`tritonclient`, KServe's SDK,
`perf_analyzer`) and gateways can call the service.

    GET  /v2                                   server metadata (name, version, extensions)
    GET  /v2/health/live, /v2/health/ready     200 when live / when a version is loaded
    GET  /v2/models/janus[/versions/V]         model metadata: inputs, outputs, versions
    GET  /v2/models/janus[/versions/V]/ready   200 when that version can answer
    POST /v2/models/janus[/versions/V]/infer   inference (a version: the same pinning as
                                               `/classify?version=`)

One model, `janus`; its versions are the store's. Inputs (one per request):

- `images`, `BYTES` [N]: encoded images (PNG, JPEG, …), base64 strings in JSON or raw bytes
  through the binary data extension; every check of `/classify` applies (formats, pixel and decode
  budgets, frame and image counts).
- `pixels`, `FP32` [N, 3, S, S]: already prepared as the model takes them (RGB values 0–255, the
  ONNX model's input; S in the metadata), for clients that do their own preprocessing.

Outputs: `probabilities`, `FP32` [N, C] (softmax over the version's classes, in the metadata's
order), and `labels`, `BYTES` [N, k], the top-k class names (k: the request parameter `top_k`,
default 5). An output requested with `parameters.classification: k` is answered, as the
classification extension says, with `BYTES` [N, k] strings `"score:index:label"`, best first.
Binary outputs (`binary_data` per output, or `binary_data_output` for all) follow the binary
data extension: the JSON header first, its length in `Inference-Header-Content-Length`, then the
tensors' bytes (FP32 little-endian; BYTES as 4-byte little-endian lengths and the bytes).

Errors are the protocol's `{"error": "..."}`, with the status codes `/classify` answers; the
in-flight bound, batching, shadow, metrics and the classify token are the same.
"""

import json
import struct
from collections.abc import Callable, Sequence
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as package_version
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, JsonValue, ValidationError

from service import inference
from service.auth import Credentials, check_classify
from service.core import Serving
from service.images import ImageError, decode_base64
from service.runtime import LoadedModel

MODEL = "janus"
HEADER_LENGTH = "Inference-Header-Content-Length"
EXTENSIONS = ["binary_tensor_data", "classification"]
DEFAULT_TOP_K = 5


class Tensor(BaseModel):
    """An input tensor of an inference request."""

    model_config = ConfigDict(extra="ignore")
    name: str = Field(max_length=64)
    shape: list[int] = Field(max_length=8)
    datatype: str = Field(max_length=16)
    parameters: dict[str, JsonValue] = Field(default_factory=dict)
    data: list[Any] | None = None


class Requested(BaseModel):
    """An output a request asks for."""

    model_config = ConfigDict(extra="ignore")
    name: str = Field(max_length=64)
    parameters: dict[str, JsonValue] = Field(default_factory=dict)


class InferRequest(BaseModel):
    """`POST /v2/models/janus/infer`'s JSON (the binary data, if any, follows it)."""

    model_config = ConfigDict(extra="ignore")
    id: str | None = Field(None, max_length=256)
    parameters: dict[str, JsonValue] = Field(default_factory=dict)
    inputs: list[Tensor] = Field(min_length=1, max_length=1)
    outputs: list[Requested] | None = Field(None, max_length=2)


_INFER_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": InferRequest.model_json_schema()},
            "application/octet-stream": {
                "schema": {
                    "type": "string",
                    "format": "binary",
                    "description": f"the JSON request ({HEADER_LENGTH} bytes), then the "
                    "inputs' binary data",
                }
            },
        },
    }
}


def _error(err: Exception) -> JSONResponse:
    """The protocol's error shape, with the status `/classify` gives the same failure."""
    if isinstance(err, HTTPException):
        detail = err.detail if isinstance(err.detail, str) else json.dumps(err.detail)
        return JSONResponse({"error": detail}, err.status_code, headers=err.headers)
    if isinstance(err, ImageError):
        return JSONResponse({"error": str(err)}, err.status)
    raise err


def _server_version() -> str:
    try:
        return package_version("janus-serve")
    except PackageNotFoundError:
        return "0"


# -- reading a request ---------------------------------------------------------------------


def _split(body: bytes, header: str | None) -> tuple[bytes, bytes]:
    """The JSON part and the binary part of a request body."""
    if header is None:
        return body, b""
    try:
        length = int(header)
    except ValueError:
        raise HTTPException(400, f"{HEADER_LENGTH} must be an integer, got {header!r}") from None
    if not 0 < length <= len(body):
        raise HTTPException(400, f"{HEADER_LENGTH} {length} does not fit a {len(body)}-byte body")
    return body[:length], body[length:]


def _parse(raw: bytes) -> InferRequest:
    try:
        return InferRequest.model_validate_json(raw)
    except ValidationError as err:
        if any(e["type"] == "json_invalid" for e in err.errors()):
            raise HTTPException(400, f"invalid JSON: {err.errors()[0]['msg']}") from None
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in err.errors()
        )
        raise HTTPException(422, f"invalid inference request: {problems}") from None


def _count(shape: Sequence[int], limit: int, images: int) -> int:
    """Elements of a tensor of `shape`, refused beyond `limit` (the values of `images` images)
    before any data is read."""
    n = 1
    for dim in shape:
        if dim < 0:
            raise HTTPException(400, f"shape {list(shape)} has a negative dimension")
        n *= dim
        if n > limit:
            raise HTTPException(
                413,
                f"shape {list(shape)} holds more than {images} images; the limit is {images} "
                "(JANUS_MAX_IMAGES)",
            )
    return n


def _binary(tensor: Tensor, stream: memoryview, offset: int) -> tuple[memoryview, int]:
    """The tensor's bytes from the binary part, if it has `binary_data_size`."""
    size = tensor.parameters.get("binary_data_size")
    if not isinstance(size, int) or size < 0 or offset + size > len(stream):
        raise HTTPException(
            400,
            f"input {tensor.name!r}: binary_data_size {size!r} does not fit the "
            f"{len(stream) - offset} bytes left after the JSON header",
        )
    return stream[offset : offset + size], offset + size


def _flat(data: list[Any], limit: int) -> list[Any]:
    """JSON tensor data, nested or flat, in row-major order."""
    out: list[Any] = []
    stack: list[Any] = [iter(data)]
    while stack:
        item = next(stack[-1], StopIteration)
        if item is StopIteration:
            stack.pop()
        elif isinstance(item, list):
            stack.append(iter(item))
        else:
            out.append(item)
            if len(out) > limit:
                raise HTTPException(413, f"the tensor's data holds more than {limit} values")
    return out


def _images(tensor: Tensor, raw: memoryview | None, limit: int) -> list[bytes]:
    """The encoded images of a BYTES tensor: binary (length-prefixed) or base64 JSON strings."""
    n = _count(tensor.shape, limit, limit)
    if raw is not None:
        out, at, view = [], 0, bytes(raw)
        while at < len(view):
            if at + 4 > len(view):
                raise HTTPException(400, f"input {tensor.name!r}: a BYTES element is cut short")
            (size,) = struct.unpack_from("<I", view, at)
            if at + 4 + size > len(view):
                raise HTTPException(400, f"input {tensor.name!r}: a BYTES element is cut short")
            out.append(view[at + 4 : at + 4 + size])
            at += 4 + size
    elif tensor.data is not None:
        items = _flat(tensor.data, limit)
        if not all(isinstance(item, str) for item in items):
            raise HTTPException(400, f"input {tensor.name!r}: JSON BYTES data must be strings")
        out = [decode_base64(item, i) for i, item in enumerate(items)]
    else:
        raise HTTPException(400, f"input {tensor.name!r} has neither data nor binary_data_size")
    if len(out) != n:
        raise HTTPException(
            400, f"input {tensor.name!r}: shape {tensor.shape} says {n} images, it holds {len(out)}"
        )
    return out


def _pixels(tensor: Tensor, raw: memoryview | None, model: LoadedModel, limit: int) -> np.ndarray:
    """The FP32 [N, 3, S, S] tensor, checked against the model's side and the image count."""
    side = model.size
    if len(tensor.shape) != 4 or tensor.shape[1:] != [3, side, side]:
        raise HTTPException(
            400,
            f"input {tensor.name!r}: shape {tensor.shape}; version {model.version} takes "
            f"[N, 3, {side}, {side}] (RGB values 0–255)",
        )
    n = _count(tensor.shape, limit * 3 * side * side, limit)
    if raw is not None:
        if len(raw) != 4 * n:
            raise HTTPException(
                400, f"input {tensor.name!r}: {len(raw)} bytes for {n} FP32 values ({4 * n})"
            )
        flat = np.frombuffer(raw, dtype="<f4").astype(np.float32)
    elif tensor.data is not None:
        values = _flat(tensor.data, n)
        if len(values) != n or not all(
            isinstance(v, int | float) and not isinstance(v, bool) for v in values
        ):
            raise HTTPException(400, f"input {tensor.name!r}: needs {n} numbers")
        flat = np.asarray(values, dtype=np.float32)
    else:
        raise HTTPException(400, f"input {tensor.name!r} has neither data nor binary_data_size")
    if not np.isfinite(flat).all():
        raise HTTPException(400, f"input {tensor.name!r}: values must be finite")
    return flat.reshape(tensor.shape)


# -- shaping the answer --------------------------------------------------------------------


def _bytes_tensor(items: Sequence[bytes]) -> bytes:
    return b"".join(struct.pack("<I", len(b)) + b for b in items)


def _top_k(request: InferRequest, serving: Serving, classes: int) -> int:
    k = request.parameters.get("top_k", DEFAULT_TOP_K)
    if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= serving.settings.max_top_k:
        raise HTTPException(
            422, f"top_k must be an integer from 1 to {serving.settings.max_top_k}, got {k!r}"
        )
    return min(k, classes)


def _values(
    out: Requested, request: InferRequest, serving: Serving, names: Sequence[str], probs: np.ndarray
) -> tuple[np.ndarray | list[bytes], list[int]]:
    """One requested output's values (an FP32 array, or BYTES items) and its shape."""
    order = np.argsort(-probs, axis=1)  # (N, C) best first
    classification = out.parameters.get("classification")
    if classification is not None:  # the classification extension: "score:index:label"
        if not isinstance(classification, int) or isinstance(classification, bool):
            raise HTTPException(422, "parameters.classification must be an integer")
        k = max(1, min(classification, len(names)))
        items = [
            f"{probs[i, j]:f}:{j}:{names[j]}".encode()
            for i in range(len(probs))
            for j in order[i, :k]
        ]
        return items, [len(probs), k]
    if out.name == "probabilities":
        return probs.astype("<f4"), list(probs.shape)
    if out.name == "labels":
        k = _top_k(request, serving, len(names))
        return [names[j].encode() for row in order[:, :k] for j in row], [len(probs), k]
    raise HTTPException(
        400, f"unknown output {out.name!r}; this model has 'probabilities' and 'labels'"
    )


def _outputs(
    request: InferRequest, serving: Serving, model: LoadedModel, probs: np.ndarray
) -> tuple[dict[str, Any], bytes]:
    """The response's JSON and its binary part."""
    wanted = request.outputs or [Requested(name="probabilities"), Requested(name="labels")]
    everything_binary = request.parameters.get("binary_data_output") is True
    tensors, blobs = [], []
    for out in wanted:
        values, shape = _values(out, request, serving, model.class_names, probs)
        datatype = "FP32" if isinstance(values, np.ndarray) else "BYTES"
        tensor: dict[str, Any] = {"name": out.name, "datatype": datatype, "shape": shape}
        if everything_binary or out.parameters.get("binary_data") is True:
            if isinstance(values, np.ndarray):
                blob = np.ascontiguousarray(values).tobytes()
            else:
                blob = _bytes_tensor(values)
            tensor["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        elif isinstance(values, np.ndarray):
            tensor["data"] = [float(v) for v in values.ravel()]
        else:
            tensor["data"] = [v.decode() for v in values]
        tensors.append(tensor)
    body: dict[str, Any] = {"model_name": MODEL, "model_version": model.version}
    if request.id is not None:
        body["id"] = request.id
    body["outputs"] = tensors
    return body, b"".join(blobs)


def _answer(body: dict[str, Any], blob: bytes) -> Response:
    header = json.dumps(body).encode()
    if not blob:
        return Response(header, media_type="application/json")
    return Response(
        header + blob,
        media_type="application/octet-stream",
        headers={HEADER_LENGTH: str(len(header))},
    )


def _metadata(serving: Serving, model: LoadedModel) -> dict[str, Any]:
    side, classes = model.size, len(model.class_names)
    quarantined = serving.store.quarantined()
    versions = [v for v in serving.store.version_ids() if v not in quarantined]
    return {
        "name": MODEL,
        "versions": versions,
        "platform": model.engine,
        "inputs": [
            {"name": "images", "datatype": "BYTES", "shape": [-1]},
            {"name": "pixels", "datatype": "FP32", "shape": [-1, 3, side, side]},
        ],
        "outputs": [
            {"name": "probabilities", "datatype": "FP32", "shape": [-1, classes]},
            {"name": "labels", "datatype": "BYTES", "shape": [-1, -1]},
        ],
        "parameters": {
            "version": model.version,
            "classes": list(model.class_names),
            "input": "RGB values 0-255, shape [N, 3, S, S]",
            "max_images": serving.settings.max_images,
        },
    }


# -- routes --------------------------------------------------------------------------------


def _known(name: str) -> None:
    if name != MODEL:
        raise HTTPException(404, f"unknown model {name!r}; this server serves {MODEL!r}")


def create_v2(get_serving: Callable[[], Serving]) -> APIRouter:
    """The protocol's routes; `get_serving()` returns this worker's `Serving`."""
    router = APIRouter(prefix="/v2", tags=["open inference protocol"])
    Svc = Annotated[Serving, Depends(get_serving)]

    @router.get("")
    def server_metadata() -> dict[str, Any]:
        """Server name, version and protocol extensions."""
        return {"name": "janus-serve", "version": _server_version(), "extensions": EXTENSIONS}

    @router.get("/health/live")
    def live() -> dict[str, Any]:
        """200 while the process answers."""
        return {"live": True}

    @router.get("/health/ready")
    def ready(serving: Svc) -> Response:
        """200 when a version is loaded."""
        ok = serving.model is not None
        return JSONResponse({"ready": ok}, 200 if ok else 503)

    async def _model(serving: Serving, creds: Any, name: str, version: str | None) -> LoadedModel:
        check_classify(serving.settings, creds, "the model routes")
        _known(name)
        return await inference.model_for(serving, version)

    @router.get("/models/{name}")
    async def model_metadata(name: str, creds: Credentials, serving: Svc) -> Any:
        """The serving version's inputs, outputs and classes, and the versions there are."""
        try:
            return _metadata(serving, await _model(serving, creds, name, None))
        except inference.FAILURES as err:
            return _error(err)

    @router.get("/models/{name}/versions/{version}")
    async def version_metadata(name: str, version: str, creds: Credentials, serving: Svc) -> Any:
        """One version's inputs, outputs and classes."""
        try:
            return _metadata(serving, await _model(serving, creds, name, version))
        except inference.FAILURES as err:
            return _error(err)

    @router.get("/models/{name}/ready")
    async def model_ready(name: str, creds: Credentials, serving: Svc) -> Any:
        """200 when the serving version is loaded."""
        try:
            await _model(serving, creds, name, None)
            return {"name": MODEL, "ready": True}
        except inference.FAILURES as err:
            return _error(err)

    @router.get("/models/{name}/versions/{version}/ready")
    async def version_ready(name: str, version: str, creds: Credentials, serving: Svc) -> Any:
        """200 when that version loads and answers here."""
        try:
            model = await _model(serving, creds, name, version)
            return {"name": MODEL, "version": model.version, "ready": True}
        except inference.FAILURES as err:
            return _error(err)

    @router.post("/models/{name}/infer", response_model=None, openapi_extra=_INFER_BODY)
    async def infer(name: str, request: Request, creds: Credentials, serving: Svc) -> Response:
        """Inference with the serving version."""
        return await _infer(serving, creds, name, None, request)

    @router.post(
        "/models/{name}/versions/{version}/infer", response_model=None, openapi_extra=_INFER_BODY
    )
    async def infer_version(
        name: str, version: str, request: Request, creds: Credentials, serving: Svc
    ) -> Response:
        """Inference with one version (the same pinning as `/classify?version=`)."""
        return await _infer(serving, creds, name, version, request)

    return router


async def _infer(
    serving: Serving, creds: Any, name: str, version: str | None, request: Request
) -> Response:
    try:
        check_classify(serving.settings, creds, "the model routes")
        _known(name)
        async with inference.admitted(serving) as start:  # before the body is read
            try:
                return await _infer_admitted(serving, version, request, start)
            except inference.FAILURES as err:
                inference.count_failure(serving, err)
                raise
    except inference.FAILURES as err:
        return _error(err)


async def _infer_admitted(
    serving: Serving, version: str | None, request: Request, start: float
) -> Response:
    raw_json, binary = _split(await request.body(), request.headers.get(HEADER_LENGTH))
    parsed = await run_in_threadpool(_parse, raw_json)
    (tensor,) = parsed.inputs
    model = await inference.model_for(serving, version)
    limit = serving.settings.max_images
    raw = None
    if "binary_data_size" in tensor.parameters:
        raw, _ = _binary(tensor, memoryview(binary), 0)
    if tensor.name == "images" and tensor.datatype == "BYTES":
        data = _images(tensor, raw, limit)
        inference.check_count(serving, len(data), "the tensor `images` is empty")
        x = await inference.decode(serving, data, model)
    elif tensor.name == "pixels" and tensor.datatype == "FP32":
        x = _pixels(tensor, raw, model, limit)
        inference.check_count(serving, len(x), "the tensor `pixels` is empty")
    else:
        raise HTTPException(
            400,
            f"input {tensor.name!r} ({tensor.datatype}): send `images` (BYTES, encoded images) "
            "or `pixels` (FP32 [N, 3, S, S])",
        )
    logits = await inference.run(serving, model, x, pinned=version is not None)
    body, blob = _outputs(parsed, serving, model, inference.softmax(logits))
    inference.count_success(serving, model.version, len(x), start)
    return _answer(body, blob)
