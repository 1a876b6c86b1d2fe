"""Running the service: the checks ``visroute serve`` makes before anything loads, then one uvicorn process, N
uvicorn worker processes on one socket, or a Ray Serve application. Slow clients are cut by uvicorn's keep-alive
timeout and header-size limit (from the config's ``limits``, for uvicorn's httptools parser through
``serve.protocol``) and by the gate's body deadline (408)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import uvicorn

from visroute.errors import VisrouteError
from visroute.serve.app import create_app
from visroute.serve.config import Limits, load_config, serve_api_keys

LOOPBACK = ("127.0.0.1", "localhost", "::1")


@dataclass(frozen=True)
class ServeOptions:
    """How `visroute serve` runs (where and how many processes); what it serves is the config."""
    config: Optional[Path]
    host: str = "127.0.0.1"
    port: int = 8000
    api_keys_file: Optional[Path] = None
    open_mode: bool = False
    graceful_s: float = 30.0
    workers: int = 1
    engine: str = "local"
    replicas: int = 1
    num_gpus: float = 0.0
    ray_address: Optional[str] = None


def check_options(o: ServeOptions) -> None:
    """Option combinations refused before anything loads (one line each)."""
    if o.open_mode and o.host not in LOOPBACK:
        raise VisrouteError(f"--open serves without authentication, so it binds only to loopback, not {o.host}; "
                            "give API keys instead ($VISROUTE_SERVE_API_KEYS or --api-keys-file)")
    if o.engine not in ("local", "ray"):
        raise VisrouteError(f"--engine must be local or ray, got {o.engine!r}")
    if o.engine == "ray" and o.workers > 1:
        raise VisrouteError("--workers is for the local engine; with --engine ray give --replicas")


def uvicorn_options(limits: Limits, graceful_s: float) -> dict:
    """The uvicorn settings every local process gets: quiet, and bounded for slow or idle clients."""
    import importlib.util

    return {"log_level": "warning", "access_log": False, "timeout_graceful_shutdown": graceful_s,
            # httptools (fast; its head bounded by serve.protocol) where installed, else h11 (bounded by uvicorn)
            "http": "visroute.serve.protocol:BoundedHttpToolsProtocol" if importlib.util.find_spec("httptools")
            else "h11",
            "timeout_keep_alive": limits.keep_alive_s, "h11_max_incomplete_event_size": limits.max_header_bytes}


def run_service(o: ServeOptions, echo: Callable[[str], None]) -> None:
    """Check, build the app (which checks the config without loading models), announce, and serve until a signal.
    A model, label set or router that fails to load (e.g. a bundle that fails validation) stops the service with
    one line; /readyz never turns green for it."""
    check_options(o)
    cfg = load_config(o.config)
    app = create_app(cfg, serve_api_keys(o.api_keys_file), o.open_mode)
    app.state.serve.check()
    echo(f"visroute serve: http://{o.host}:{o.port}/ ({'open, no API key' if o.open_mode else 'API key required'}; "
         f"config: {cfg.source})")
    if o.engine == "ray":
        from visroute.serve.ray_app import run_ray

        return run_ray(o.config, o.api_keys_file, o.open_mode, o.host, o.port, o.replicas, o.num_gpus, o.ray_address)
    if o.workers > 1:
        return serve_workers(o, cfg.limits)
    server = app.state.uvicorn_server = uvicorn.Server(uvicorn.Config(
        app, host=o.host, port=o.port, **uvicorn_options(cfg.limits, o.graceful_s)))
    server.run()  # SIGTERM / Ctrl-C: in-flight requests finish, then the process ends by that signal
    if app.state.serve.load_error:
        raise VisrouteError(f"the service stopped: {app.state.serve.load_error}")


def serve_workers(o: ServeOptions, limits: Limits) -> None:
    """N uvicorn worker processes on one socket (uvicorn's supervisor restarts one that dies); metrics in
    prometheus-client's multiprocess mode, summed over the workers by /metrics."""
    import json
    import os
    import shutil
    import tempfile

    from uvicorn.supervisors import Multiprocess

    from visroute.serve.app import WORKER_ENV
    from visroute.serve.metrics import MULTIPROC_ENV

    own_dir = None if os.environ.get(MULTIPROC_ENV) else tempfile.mkdtemp(prefix="visroute-metrics-")
    os.environ[WORKER_ENV] = json.dumps({"config": str(o.config.resolve()) if o.config else None,
                                         "open": o.open_mode, "api_keys_file": str(o.api_keys_file.resolve())
                                         if o.api_keys_file else None})
    if own_dir:
        os.environ[MULTIPROC_ENV] = own_dir
    try:
        cfg = uvicorn.Config("visroute.serve.app:worker_app", factory=True, host=o.host, port=o.port,
                             workers=o.workers, **uvicorn_options(limits, o.graceful_s))
        supervisor = Multiprocess(cfg, sockets=[cfg.bind_socket()])
        supervisor.run()  # SIGTERM / Ctrl-C: every worker lets its in-flight requests finish, then exits
        if any(p.exitcode == 3 for p in supervisor.processes):
            raise VisrouteError("the service stopped: a worker could not load its models (see the log above)")
    finally:
        if own_dir:
            shutil.rmtree(own_dir, ignore_errors=True)
