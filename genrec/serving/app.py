"""`genrec serve`: the HTTP API and the page over a RecommendationService (genrec.serving.service).

    genrec serve --config recipes/configs/ml100k/smollm2_atomic.yaml run.output_dir=runs/demo/tuned
    curl -s localhost:8000/recommend -H 'content-type: application/json' -d '{"user_id": "1", "explain": true}'

- ``GET /health``: model, checkpoint, catalog size, batches ranked so far.
- ``POST /recommend``: ``{"user_id": "1"}`` or ``{"history": ["Heat (1995)", "50"]}`` (titles or item ids,
  oldest first), with ``k``, ``explain`` and ``exclude_seen``; answers the history used and the top-k, each
  with its explanation, its checked claims and the history titles it cites when ``explain`` is true.
  Unknown user: 404; unknown titles: 422 listing each with its close matches; a malformed or oversized
  request: 4xx with the reason. An error in one request never takes the server down.
- ``GET /api/titles?q=...``: catalog titles for the page's autocomplete; ``GET /api/users``: some user ids.
- ``GET /``: the page (genrec/serving/web/index.html).

Binds to loopback unless ``--host`` says otherwise; requests over ``--max-request-bytes`` are refused.
"""

from __future__ import annotations

import json
from importlib import resources

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from genrec.serving.service import RecommendationService, RequestError
from genrec.serving.service import Request as ServiceRequest


class RecommendBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    user_id: str | int | None = Field(None, description="a known user: recommend from their whole history")
    history: list[str | int] | None = Field(None, max_length=1000,
                                            description="item ids or titles, oldest first (instead of user_id)")
    k: int = Field(10, ge=1, le=1000, description="items to return")
    explain: bool = Field(False, description="explain each item with a grounded 'because' line")
    exclude_seen: bool = Field(True, description="never return an item of the history")


def create_app(service: RecommendationService, max_request_bytes: int = 65536) -> FastAPI:
    app = FastAPI(title="genrec", description="Generative recommendations with grounded explanations")
    page = resources.files("genrec.serving.web").joinpath("index.html").read_text(encoding="utf-8")

    @app.middleware("http")
    async def limit_size(request: Request, call_next):
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > max_request_bytes):
            return JSONResponse({"detail": f"request body over the limit of {max_request_bytes} bytes"}, status_code=413)
        if request.method == "POST" and length is None:  # chunked: read it, but never past the limit
            body = b""
            async for chunk in request.stream():
                body += chunk
                if len(body) > max_request_bytes:
                    return JSONResponse({"detail": f"request body over the limit of {max_request_bytes} bytes"},
                                        status_code=413)
            request._body = body  # noqa: SLF001 - starlette reads the cached body downstream
        return await call_next(request)

    @app.exception_handler(RequestError)
    async def request_error(_, e: RequestError):
        content = {"detail": e.message, **({"unknown": e.unknown} if e.unknown else {})}
        return JSONResponse(content, status_code=e.status)

    @app.exception_handler(RequestValidationError)
    async def invalid(_, e: RequestValidationError):
        problems = "; ".join(f"{'.'.join(str(p) for p in err['loc'][1:]) or 'body'}: {err['msg']}" for err in e.errors())
        return JSONResponse({"detail": f"invalid request: {problems}"}, status_code=422)

    @app.exception_handler(json.JSONDecodeError)
    async def not_json(_, e: json.JSONDecodeError):
        return JSONResponse({"detail": f"the body is not JSON: {e}"}, status_code=400)

    @app.get("/health")
    def health():
        return {"status": "ok", "model": service.cfg.model.name_or_path,
                "checkpoint": str(service.checkpoint) if service.checkpoint else None,
                "identifier": service.cfg.items.identifier, "items": len(service.catalog),
                "users": len(service.split.sequences), "batches": service.batches}

    @app.post("/recommend")
    async def recommend(body: RecommendBody):
        request = ServiceRequest(None if body.user_id is None else str(body.user_id),
                                 None if body.history is None else [str(h) for h in body.history],
                                 body.k, body.explain, body.exclude_seen)
        return await run_in_threadpool(service.recommend, request)

    @app.get("/api/titles")
    def titles(q: str = Query("", max_length=200), limit: int = Query(10, ge=1, le=50)):
        return service.titles(q, limit)

    @app.get("/api/users")
    def users(limit: int = Query(50, ge=1, le=1000)):
        return service.users(limit)

    @app.get("/", response_class=HTMLResponse)
    def index():
        return page

    return app


def serve(cfg, host: str = "127.0.0.1", port: int = 8000, max_request_bytes: int = 65536,
          batch_wait_ms: float = 5.0) -> None:
    import uvicorn

    service = RecommendationService(cfg, batch_wait_ms)
    uvicorn.run(create_app(service, max_request_bytes), host=host, port=port, log_level="info")
