"""The HTTP application: KServe's V1 and V2 routes over a :class:`~kftune.serving.model.KftuneModel`,
a plain ``POST /predict`` (Pydantic request and response models, so ``/docs`` documents it), request
guards and Prometheus metrics.

Built on a FastAPI application of its own rather than ``kserve.model_server.app`` (a module global
configured from ``sys.argv``), with KServe's route registration and exception handlers, so that the server
binds the host it is given and an application can be built more than once in a process.

Guards, before a route sees the request (:class:`RequestGuard`): a body over ``max_body_bytes`` is 413, a
JSON body that is not UTF-8 is 400 naming the byte. ``/v2/health/ready`` is true only once the model is loaded.
KServe's model repository routes (``/v2/repository/models/.../load|unload``) are left out: a client must
not be able to unload the one model a server exists for.
"""

from __future__ import annotations

import json
import time
from typing import Any, Literal

import orjson
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, model_validator

from kftune._version import __version__
from kftune.serving import metrics
from kftune.serving._kserve import kserve_modules
from kftune.serving.model import KftuneModel, check_texts

kserve_modules()
from kserve import errors as kerrors  # noqa: E402
from kserve.errors import InvalidInput  # noqa: E402
from kserve.model_repository import ModelRepository  # noqa: E402
from kserve.protocol.dataplane import DataPlane  # noqa: E402
from kserve.protocol.model_repository_extension import ModelRepositoryExtension  # noqa: E402
from kserve.protocol.rest.server import metrics_handler  # noqa: E402
from kserve.protocol.rest.v1_endpoints import register_v1_endpoints  # noqa: E402
from kserve.protocol.rest.v2_endpoints import register_v2_endpoints  # noqa: E402

DEFAULT_MAX_BODY_BYTES = 4 * 1024 * 1024
MAX_TEXTS_PER_REQUEST = 1024
_JSON_TYPES = ("application/json", "application/cloudevents+json")


# ------------------------------------------------------------------------------------------------
# POST /predict: request and response models


class PredictRequest(BaseModel):
    """One text (``text``) or several (``texts``); ``top_k`` limits ``probabilities`` (classifiers)."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"text": "이 영화 정말 재밌어요. 배우들 연기가 최고!"}, {"texts": ["최악의 영화", "또 보고 싶다"], "top_k": 1}]})

    text: str | None = Field(None, description="the text to classify or tag")
    texts: list[str] | None = Field(None, description=f"several texts (at most {MAX_TEXTS_PER_REQUEST})",
                                    max_length=MAX_TEXTS_PER_REQUEST)
    top_k: int | None = Field(None, ge=1, description="keep the k most probable labels in probabilities")

    @model_validator(mode="after")
    def _one_of(self) -> "PredictRequest":
        if (self.text is None) == (self.texts is None):
            raise ValueError('send exactly one of "text" (a string) or "texts" (a list of strings)')
        if self.texts is not None and not self.texts:
            raise ValueError('"texts" is empty; send at least one text')
        return self


class Span(BaseModel):
    type: str = Field(description="the entity type (PER, LOC, ...)")
    start: int = Field(description="index of its first token")
    end: int = Field(description="index after its last token")
    text: str = Field(description="its tokens joined by spaces")
    score: float | None = Field(None, description="mean tag probability of its tokens")


class Prediction(BaseModel):
    """A classifier's answer (``label``, ``raw_label``, ``score``, ``probabilities``) or a tagger's
    (``tokens``, ``tags``, ``tag_scores``, ``spans``)."""

    label: str | None = Field(None, description="the predicted label, by its name in the spec's labelMap (e.g. 긍정)")
    raw_label: str | None = Field(None, description="the label as the training corpus writes it (e.g. 1)")
    score: float | None = Field(None, description="the probability of label")
    probabilities: dict[str, float] | None = Field(None, description="label -> probability, most probable first")
    tokens: list[str] | None = None
    tags: list[str] | None = None
    tag_scores: list[float] | None = None
    spans: list[Span] | None = None


class PredictResponse(Prediction):
    """For ``text``: its prediction's fields at the top level; for ``texts``: ``predictions``, one per text."""

    model_config = ConfigDict(json_schema_extra={"examples": [
        {"model": "nsmc", "label": "긍정", "raw_label": "1", "score": 0.93, "probabilities": {"긍정": 0.93, "부정": 0.07}}]})

    model: str = Field(description="the served model's name")
    predictions: list[Prediction] | None = None


class ErrorResponse(BaseModel):
    error: str


# ------------------------------------------------------------------------------------------------
# request guard and metrics (a plain ASGI middleware: no per-request task, body replayed to the app)


class RequestGuard:
    """Limits the body size (413), refuses JSON that is not UTF-8 (400), and records every request's route
    family, status code and latency in :mod:`kftune.serving.metrics`."""

    def __init__(self, app: Any, max_body_bytes: int):
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        route = metrics.route_family(path)
        started = time.perf_counter()
        status = {"code": 500}
        if path.startswith(REPOSITORY_PREFIX):  # one model per server: no client may load or unload models
            await self._refuse(send, 404, f"{path}: this server serves one model; the model repository API is off")
            metrics.REQUESTS.labels(route, "404").inc()
            metrics.ERRORS.labels(route, "404").inc()
            return

        async def send_recording(message: dict) -> None:
            if message["type"] == "http.response.start":
                status["code"] = int(message["status"])
            await send(message)

        try:
            if scope.get("method") in ("POST", "PUT", "PATCH"):
                headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
                declared = headers.get("content-length")
                if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
                    await self._refuse(send_recording, 413, self._too_large(int(declared)))
                    return
                body = bytearray()
                more = True
                while more:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        return
                    body += message.get("body", b"")
                    more = message.get("more_body", False)
                    if len(body) > self.max_body_bytes:
                        await self._refuse(send_recording, 413, self._too_large(len(body)))
                        return
                ctype = headers.get("content-type", "").split(";")[0].strip().lower()
                binary_v2 = "inference-header-content-length" in headers
                if ctype in _JSON_TYPES and not binary_v2:
                    try:
                        bytes(body).decode("utf-8")
                    except UnicodeDecodeError as exc:
                        await self._refuse(send_recording, 400, f"the request body is not valid UTF-8 "
                                                                f"({exc.reason} at byte {exc.start}); send UTF-8 JSON")
                        return
                replayed = {"done": False}

                async def replay() -> dict:
                    if not replayed["done"]:
                        replayed["done"] = True
                        return {"type": "http.request", "body": bytes(body), "more_body": False}
                    return await receive()

                await self.app(scope, replay, send_recording)
            else:
                await self.app(scope, receive, send_recording)
        finally:
            code = str(status["code"])
            metrics.REQUESTS.labels(route, code).inc()
            if status["code"] >= 400:
                metrics.ERRORS.labels(route, code).inc()
            metrics.LATENCY.labels(route).observe(time.perf_counter() - started)

    def _too_large(self, size: int) -> str:
        return (f"the request body has {size} bytes; this server takes at most {self.max_body_bytes} "
                "(kftune serve --max-body-bytes)")

    @staticmethod
    async def _refuse(send: Any, code: int, message: str) -> None:
        body = json.dumps({"error": message}, ensure_ascii=False).encode("utf-8")
        await send({"type": "http.response.start", "status": code,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


REPOSITORY_PREFIX = "/v2/repository/"


def _hide_repository_routes(app: FastAPI) -> None:
    """Leave KServe's repository routes out of the OpenAPI page (:class:`RequestGuard` answers them 404)."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = build()
            schema["paths"] = {p: v for p, v in schema["paths"].items() if not p.startswith(REPOSITORY_PREFIX)}
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


class _ReadyDataPlane(DataPlane):
    """Server readiness = every registered model loaded (KServe's own answers true without a model check)."""

    async def ready(self) -> bool:
        models = self.model_registry.get_models()
        return bool(models) and all(getattr(m, "ready", False) for m in models.values())


async def _require_json(request: Request) -> None:  # async: a plain def would run in the thread pool
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype != "application/json":
        raise HTTPException(415, f"Content-Type must be application/json, got {ctype or 'none'}")


async def _http_error(_: Request, exc: HTTPException) -> JSONResponse:
    return JSONResponse(status_code=exc.status_code, content={"error": str(exc.detail)})


async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
    """422 with one readable line per problem (``body.text: ...``) under ``error``, and FastAPI's details."""
    errors = list(exc.errors())
    # the V2 route's body is "InferenceRequest | bytes": the bytes branch's complaint only adds noise
    errors = [e for e in errors if tuple(e.get("loc", ())) != ("body", "bytes")] or errors
    lines = []
    for e in errors:
        if e.get("type") == "json_invalid":
            reason = (e.get("ctx") or {}).get("error", "")
            lines.append(f"the body is not valid JSON ({reason})" if reason else "the body is not valid JSON")
            continue
        where = ".".join(str(p) for p in e.get("loc", ()) if p not in ("body", "InferenceRequest")) or "body"
        lines.append(f"{where}: {str(e.get('msg', 'invalid')).removeprefix('Value error, ')}")
    return JSONResponse(status_code=422, content={"error": "; ".join(lines) or "invalid request",
                                                  "detail": jsonable(exc.errors())})


def jsonable(errors: Any) -> Any:
    from fastapi.encoders import jsonable_encoder

    return jsonable_encoder(errors, custom_encoder={Exception: str, bytes: lambda b: b.decode("utf-8", "replace")})


def build_app(model: KftuneModel, *, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES) -> FastAPI:
    """The application serving ``model`` (loaded or not: readiness says which)."""
    from starlette.exceptions import HTTPException as StarletteHTTPException

    repo = ModelRepository()
    repo.update(model)
    dataplane = _ReadyDataPlane(model_registry=repo)
    extension = ModelRepositoryExtension(model_registry=repo)
    app = FastAPI(
        title="kftune model server", version=__version__, docs_url="/docs", redoc_url=None,
        description=(f"Serves the kftune model **{model.name}**: `POST /predict` with `{{\"text\": ...}}`, "
                     "KServe V1 (`/v1/models/{name}:predict`) and the Open Inference Protocol "
                     "(`/v2/models/{name}/infer`, BYTES input `text`). Metrics at `/metrics`."))

    # first in the route table (the busiest route), and answered as bytes: the records are built here, so
    # FastAPI's response-model validation would only cost time; the model still documents the answer
    @app.post("/predict", response_model=None, tags=["kftune"], dependencies=[Depends(_require_json)],
              responses={200: {"model": PredictResponse}, 400: {"model": ErrorResponse}, 413: {"model": ErrorResponse},
                         415: {"model": ErrorResponse}, 422: {"model": ErrorResponse},
                         503: {"model": ErrorResponse}})
    async def predict(body: PredictRequest) -> Response:
        """Classify or tag one text (``text``) or several (``texts``)."""
        if not model.ready:
            raise kerrors.ModelNotReady(model.name)
        texts = check_texts([body.text] if body.text is not None else list(body.texts or ()),
                            model.max_text_chars, where="text" if body.text is not None else "texts")
        records = await model.records(texts, body.top_k)
        answer = {**records[0], "model": model.name} if body.text is not None else {"model": model.name,
                                                                                      "predictions": records}
        return Response(orjson.dumps(answer, option=orjson.OPT_SERIALIZE_NUMPY), media_type="application/json")

    app.add_api_route("/", dataplane.live, methods=["GET"], tags=["health"])
    app.add_api_route("/metrics", metrics_handler, methods=["GET"], include_in_schema=False)
    register_v1_endpoints(app, dataplane, extension)
    register_v2_endpoints(app, dataplane, extension)
    _hide_repository_routes(app)

    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(InvalidInput, kerrors.invalid_input_handler)
    app.add_exception_handler(kerrors.InferenceError, kerrors.inference_error_handler)
    app.add_exception_handler(kerrors.ModelNotFound, kerrors.model_not_found_handler)
    app.add_exception_handler(kerrors.ModelNotReady, kerrors.model_not_ready_handler)
    app.add_exception_handler(NotImplementedError, kerrors.not_implemented_error_handler)
    app.add_exception_handler(kerrors.UnsupportedProtocol, kerrors.unsupported_protocol_error_handler)
    app.add_exception_handler(kerrors.ServerNotLive, kerrors.server_not_live_handler)
    app.add_exception_handler(kerrors.ServerNotReady, kerrors.server_not_ready_handler)
    app.add_exception_handler(Exception, kerrors.generic_exception_handler)
    app.add_middleware(RequestGuard, max_body_bytes=max_body_bytes)
    return app
