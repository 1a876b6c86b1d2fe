"""``visroute serve``: the HTTP service (classify, route, an OpenAI-compatible routing proxy, a web page)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from visroute.cli._common import quiet_libraries

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def serve(
    config: Annotated[Optional[Path], typer.Option("--config", "-c", help="serve.yaml (default: random-tiny on the "
                                                   "shipped ImageNet class names).")] = None,
    host: Annotated[str, typer.Option(help="Address to bind (loopback by default).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port to listen on.")] = 8000,
    api_keys_file: Annotated[Optional[Path], typer.Option(help="Accepted API keys, one per line (also "
                                                          "$VISROUTE_SERVE_API_KEYS, comma-separated).")] = None,
    open_mode: Annotated[bool, typer.Option("--open", help="No authentication (loopback addresses only).")] = False,
    graceful_s: Annotated[float, typer.Option("--graceful-timeout", min=0,
                                              help="Seconds in-flight requests get to finish on shutdown.")] = 30.0,
    workers: Annotated[int, typer.Option(min=1, max=64, help="Processes serving the port, each with its own models "
                                         "(one loop per process; a dead one is replaced).")] = 1,
    engine: Annotated[str, typer.Option(help="local (uvicorn) or ray (a Ray Serve application; extra ray).")] = "local",
    replicas: Annotated[int, typer.Option(min=1, max=1024,
                                          help="--engine ray: replicas of each model deployment.")] = 1,
    num_gpus: Annotated[float, typer.Option(min=0, max=64, help="--engine ray: GPUs per model replica (0.25: four "
                                            "share one).")] = 0.0,
    ray_address: Annotated[Optional[str], typer.Option(help="--engine ray: the cluster to join (default: "
                                                       "$RAY_ADDRESS, else a new local Ray).")] = None,
) -> None:
    """Serve classify and route over HTTP, with an OpenAI-compatible proxy that routes requests carrying images."""
    from visroute.errors import MissingExtraError, VisrouteError

    try:
        import uvicorn

        from visroute.serve.app import create_app
    except ImportError as e:
        raise MissingExtraError("serve", e.name or "fastapi", "visroute serve") from e
    from visroute.serve.config import load_config, serve_api_keys

    if open_mode and host not in LOOPBACK:
        raise VisrouteError(f"--open serves without authentication, so it binds only to loopback, not {host}; "
                            "give API keys instead ($VISROUTE_SERVE_API_KEYS or --api-keys-file)")
    if engine not in ("local", "ray"):
        raise VisrouteError(f"--engine must be local or ray, got {engine!r}")
    if engine == "ray" and workers > 1:
        raise VisrouteError("--workers is for the local engine; with --engine ray give --replicas")
    quiet_libraries()
    cfg = load_config(config)
    app = create_app(cfg, serve_api_keys(api_keys_file), open_mode)
    app.state.serve.check()
    typer.echo(f"visroute serve: http://{host}:{port}/ ({'open, no API key' if open_mode else 'API key required'}; "
               f"config: {cfg.source})", err=True)
    if engine == "ray":
        from visroute.serve.ray_app import run_ray

        return run_ray(config, api_keys_file, open_mode, host, port, replicas, num_gpus, ray_address)
    if workers > 1:
        return _serve_workers(config, api_keys_file, open_mode, host, port, graceful_s, workers)
    server = app.state.uvicorn_server = uvicorn.Server(uvicorn.Config(
        app, host=host, port=port, log_level="warning", access_log=False, timeout_graceful_shutdown=graceful_s))
    server.run()  # SIGTERM / Ctrl-C: in-flight requests finish, then the process ends by that signal
    if app.state.serve.load_error:
        raise VisrouteError(f"the service stopped: {app.state.serve.load_error}")


def _serve_workers(config, api_keys_file, open_mode: bool, host: str, port: int, graceful_s: float,
                   workers: int) -> None:
    """N uvicorn worker processes on one socket (uvicorn's supervisor restarts one that dies); metrics in
    prometheus-client's multiprocess mode, summed over the workers by /metrics."""
    import json
    import os
    import shutil
    import tempfile

    import uvicorn
    from uvicorn.supervisors import Multiprocess

    from visroute.errors import VisrouteError
    from visroute.serve.app import WORKER_ENV
    from visroute.serve.metrics import MULTIPROC_ENV

    own_dir = None if os.environ.get(MULTIPROC_ENV) else tempfile.mkdtemp(prefix="visroute-metrics-")
    os.environ[WORKER_ENV] = json.dumps({"config": str(config.resolve()) if config else None, "open": open_mode,
                                         "api_keys_file": str(api_keys_file.resolve()) if api_keys_file else None})
    if own_dir:
        os.environ[MULTIPROC_ENV] = own_dir
    try:
        cfg = uvicorn.Config("visroute.serve.app:worker_app", factory=True, host=host, port=port, workers=workers,
                             log_level="warning", access_log=False, timeout_graceful_shutdown=graceful_s)
        supervisor = Multiprocess(cfg, sockets=[cfg.bind_socket()])
        supervisor.run()  # SIGTERM / Ctrl-C: every worker lets its in-flight requests finish, then exits
        if any(p.exitcode == 3 for p in supervisor.processes):
            raise VisrouteError("the service stopped: a worker could not load its models (see the log above)")
    finally:
        if own_dir:
            shutil.rmtree(own_dir, ignore_errors=True)
