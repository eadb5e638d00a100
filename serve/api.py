"""The HTTP routes (FastAPI): ``POST /v1/generate``, ``GET /v1/adapters``, ``GET /healthz``, ``/docs``.

Every error answer is JSON ``{"error": <code>, "message": <text>, "detail": ...}`` with a 4xx/5xx
status; 503 answers carry ``Retry-After``. The request model (with the operator's bounds) comes
from the :class:`~serve.service.Service`, so ``/docs`` shows the real limits.
"""

# No ``from __future__ import annotations`` here: FastAPI reads the request model from the
# route's annotation, which is a local variable of ``build_api``.

import hmac
import json
import logging

from fastapi import FastAPI
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request

from alignguard import __version__
from serve.encoding import to_base64
from serve.schemas import ErrorResponse, GenerateResponse
from serve.service import Service, ServiceError

log = logging.getLogger(__name__)
OPEN_PATHS = ("/healthz", "/docs", "/openapi.json", "/docs/oauth2-redirect", "/redoc")
DESCRIPTION = """\
Text-to-image generation with AlignGuard safety LoRAs (per-category DPO experts merged with
Co-Merge). Requests name an adapter (`merged` by default, a category expert, experts joined by
`+`), get seed-exact images (image *i* uses seed + *i*) as base64 JSON or raw bytes.
"""


def error_response(status: int, error: str, message: str, detail=None, headers=None) -> JSONResponse:
    body = {"error": error, "message": message, "detail": jsonable_encoder(detail)}
    return JSONResponse(body, status_code=status, headers=headers)


def _summarize(errors: list) -> str:
    parts = []
    for error in errors[:5]:
        if error.get("type") == "json_invalid":
            parts.append("the body is not valid JSON")
            continue
        where = ".".join(str(p) for p in error.get("loc", ()) if p != "body") or "body"
        parts.append(f"{where}: {error.get('msg', 'invalid')}")
    return "; ".join(parts)


def _public(error: dict) -> dict:
    """A validation error without the offending input (it may be huge, or NaN, which JSON lacks)."""
    return {key: error[key] for key in ("type", "loc", "msg") if key in error}


def build_api(service: Service) -> FastAPI:
    """The FastAPI app of one ingress replica."""
    app = FastAPI(title="AlignGuard", version=__version__, description=DESCRIPTION)
    _add_error_handlers(app)
    _add_gatekeeper(app, service)
    GenerateRequest = service.request_model  # with this service's bounds; /docs shows the name
    errors = {code: {"model": ErrorResponse} for code in (400, 401, 403, 404, 411, 413, 422, 503, 504)}

    @app.post("/v1/generate", response_model=GenerateResponse, responses=errors)
    async def generate(body: GenerateRequest):
        """Generate images. `response: "binary"` returns the bytes of one image, with the
        metadata in `X-AlignGuard-*` headers."""
        outcome = await service.generate(body)
        if body.response == "binary":
            return _binary(outcome)
        images = [
            {
                "seed": seed,
                "data": to_base64(data) if data is not None else None,
                "withheld": data is None,
                "verdict": verdict.model_dump() if verdict is not None else None,
            }
            for seed, data, verdict in zip(
                outcome.metadata["seeds"], outcome.images, outcome.verdicts, strict=True
            )
        ]
        metadata = {k: v for k, v in outcome.metadata.items() if k != "seeds"}
        return JSONResponse({**metadata, "images": images})

    @app.get("/v1/adapters")
    async def adapters() -> dict:
        """The adapters this service may use, its default, and whether it runs base-only."""
        return service.adapters()

    @app.get("/healthz")
    async def healthz():
        """200 while a generator replica answers (`status` ok or busy), else 503."""
        status, body = await service.health()
        return JSONResponse(body, status_code=status)

    return app


def _binary(outcome) -> Response:
    data, verdict = outcome.images[0], outcome.verdicts[0]
    if data is None:
        return error_response(
            400, "image_refused", "the image guard withheld this image", verdict.model_dump()
        )
    meta = outcome.metadata
    headers = {
        "X-AlignGuard-Adapter": meta["adapter"],
        "X-AlignGuard-Seed": str(meta["seed"]),
        "X-AlignGuard-Metadata": json.dumps({k: v for k, v in meta.items() if k != "seeds"}),
    }
    return Response(content=data, media_type=meta["media_type"], headers=headers)


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ServiceError)
    async def service_error(_: Request, exc: ServiceError):
        return error_response(exc.status, exc.error, exc.message, exc.detail, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError):
        errors = [_public(e) for e in exc.errors()]
        return error_response(422, "invalid_request", _summarize(errors), errors)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException):
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return error_response(exc.status_code, code, str(exc.detail), headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def unexpected(_: Request, exc: Exception):
        log.exception("unexpected error")
        return error_response(500, "internal_error", f"{type(exc).__name__}: {str(exc)[:300]}")


def _add_gatekeeper(app: FastAPI, service: Service) -> None:
    """API key and body size, checked before the body is parsed."""
    limit = service.serve.limits.max_body_bytes

    @app.middleware("http")
    async def gatekeeper(request: Request, call_next):
        if (
            service.api_key
            and not request.url.path.endswith(OPEN_PATHS)
            and not _authorized(request, service)
        ):
            return error_response(
                401,
                "unauthorized",
                "a valid API key is required (Authorization: Bearer <key> or X-API-Key)",
                headers={"WWW-Authenticate": "Bearer"},
            )
        if request.method in ("POST", "PUT", "PATCH"):
            length = request.headers.get("content-length")
            if length is None:
                return error_response(411, "length_required", "send the body with a Content-Length header")
            if not length.isdigit():
                return error_response(400, "bad_request", "Content-Length is not a number")
            if int(length) > limit:
                return error_response(413, "too_large", f"the body is {length} bytes; at most {limit}")
        return await call_next(request)


def _authorized(request: Request, service: Service) -> bool:
    header = request.headers.get("authorization", "")
    given = header[7:] if header.lower().startswith("bearer ") else request.headers.get("x-api-key", "")
    return hmac.compare_digest(given.encode(), service.api_key.encode())
