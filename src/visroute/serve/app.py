"""The FastAPI application: ``create_app(config, keys)`` wires the state, the gate, the API, the web page and the
offline API docs. Models load in a thread after the server is up (``/healthz`` answers at once, ``/readyz`` once
everything is loaded); a load failure is logged and stops the server."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
from pathlib import Path

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse
from fastapi.staticfiles import StaticFiles

from visroute.serve.auth import KeyChecker
from visroute.serve.batching import Admission
from visroute.serve.config import ServeConfig
from visroute.serve.metrics import worker_exited
from visroute.serve.middleware import Gate, access_logger, install_error_handlers
from visroute.serve.service import ClassifyService
from visroute.serve.state import ServeState

STATIC = Path(__file__).with_name("static")


async def _load(app: FastAPI, state: ServeState) -> None:
    log = access_logger()
    try:
        if not state.ready:  # a --workers process loaded before it began to serve
            await asyncio.to_thread(state.load)
    except Exception as e:  # logged as one line; the server stops and the CLI exits with the message
        state.load_error = state.load_error or f"{type(e).__name__}: {e}"
        log.error(json.dumps({"event": "load_failed", "error": state.load_error}))
        server = getattr(app.state, "uvicorn_server", None)
        if server is not None:  # set by `visroute serve`: stop, and the command exits with the message
            server.should_exit = True
        return
    for m in state.models.values():
        m.batcher.start()
    log.info(json.dumps({"event": "ready", "models": list(state.models), "label_sets": list(state.label_sets),
                         "routers": list(state.routers), "endpoints": list(state.targets)}))


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI):
    import httpx2

    state: ServeState = app.state.serve
    state.http = httpx2.AsyncClient(limits=httpx2.Limits(max_connections=256, max_keepalive_connections=64))
    loader = asyncio.get_running_loop().create_task(_load(app, state))
    try:
        yield
    finally:  # uvicorn has already let in-flight requests finish (graceful shutdown)
        loader.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await loader
        for m in state.models.values():
            await m.batcher.stop()
        await state.http.aclose()
        if state.decode_pool is not None:
            await asyncio.to_thread(state.decode_pool.shutdown, wait=True, cancel_futures=True)
        worker_exited(os.getpid())


def _openapi_with_bearer(app: FastAPI, open_mode: bool) -> dict:
    """The OpenAPI document with an HTTP bearer scheme on every keyed path, so /docs shows an Authorize button
    and "Try it out" sends the key (the gate also takes ``X-API-Key``; the document names the header clients use)."""
    from fastapi.openapi.utils import get_openapi

    from visroute.serve.auth import KeyChecker

    if app.openapi_schema is None:
        doc = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        if not open_mode:
            doc.setdefault("components", {})["securitySchemes"] = {
                "bearer": {"type": "http", "scheme": "bearer", "description": "An API key of this service "
                           "($VISROUTE_SERVE_API_KEYS or --api-keys-file), sent as 'Authorization: Bearer KEY'."}}
            public = KeyChecker([]).is_public
            for path, ops in doc.get("paths", {}).items():
                for op in ops.values():
                    op["security"] = [] if public(path) else [{"bearer": []}]
        app.openapi_schema = doc
    return app.openapi_schema


def create_app(config: ServeConfig, keys: list[str] | None = None, open_mode: bool = False) -> FastAPI:
    """The service for ``config``. Without ``open_mode``, every /v1 call and /metrics needs one of ``keys``."""
    from visroute import __version__
    from visroute.serve import proxy, routes
    from visroute.serve.state import ServeState

    if not open_mode and not keys:
        from visroute.serve.config import SERVE_KEYS_ENV, ServeConfigError

        raise ServeConfigError(f"no API keys: set ${SERVE_KEYS_ENV} or give --api-keys-file, or pass --open to serve "
                               "without authentication on 127.0.0.1")
    state = ServeState(config)
    state.admission = Admission(config.batching.max_queue)
    app = FastAPI(title="visroute", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None,
                  description="Zero-shot classification, cost-aware routing and an OpenAI-compatible routing proxy "
                              "that understands images.")
    app.state.serve = state
    app.state.classify = ClassifyService(state)
    install_error_handlers(app)
    app.add_middleware(Gate, state=state, keys=KeyChecker(keys or [], open_mode),
                       max_body=int(config.limits.max_body_mb * 1024 * 1024))
    app.include_router(routes.api)
    app.include_router(proxy.api)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.openapi = lambda: _openapi_with_bearer(app, open_mode)

    @app.get("/", include_in_schema=False)
    async def page():
        return FileResponse(STATIC / "index.html", media_type="text/html")

    @app.get("/favicon.ico", include_in_schema=False)
    async def favicon():
        return FileResponse(STATIC / "swagger-ui" / "favicon-32x32.png", media_type="image/png")

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(openapi_url="/openapi.json", title="visroute API",
                                   swagger_js_url="/static/swagger-ui/swagger-ui-bundle.js",
                                   swagger_css_url="/static/swagger-ui/swagger-ui.css",
                                   swagger_favicon_url="/static/swagger-ui/favicon-32x32.png")

    return app


#: the options of `visroute serve --workers N`, as JSON, for the worker processes (never keys: a worker reads
#: them from the same environment variable or file the command was given)
WORKER_ENV = "VISROUTE_SERVE_WORKER_OPTIONS"


def worker_app() -> FastAPI:
    """The app of one ``--workers`` process (a uvicorn factory). It loads every model before it serves, so the
    shared socket hands it no request until it can answer; a load failure stops every worker with one line."""
    from visroute.errors import VisrouteError
    from visroute.serve.config import load_config, serve_api_keys

    opts = json.loads(os.environ[WORKER_ENV])
    try:
        app = create_app(load_config(opts["config"]), serve_api_keys(opts["api_keys_file"]), bool(opts["open"]))
        app.state.serve.check()
        app.state.serve.load()
    except VisrouteError as e:
        access_logger().error(json.dumps({"event": "load_failed", "error": str(e)}))
        sys.exit(3)  # uvicorn's STARTUP_FAILURE: the supervisor stops instead of restarting the worker
    return app
