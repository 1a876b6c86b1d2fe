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
    quiet_libraries()
    cfg = load_config(config)
    app = create_app(cfg, serve_api_keys(api_keys_file), open_mode)
    app.state.serve.check()
    typer.echo(f"visroute serve: http://{host}:{port}/ ({'open, no API key' if open_mode else 'API key required'}; "
               f"config: {cfg.source})", err=True)
    server = app.state.uvicorn_server = uvicorn.Server(uvicorn.Config(
        app, host=host, port=port, log_level="warning", access_log=False, timeout_graceful_shutdown=graceful_s))
    server.run()  # SIGTERM / Ctrl-C: in-flight requests finish, then the process ends by that signal
    if app.state.serve.load_error:
        raise VisrouteError(f"the service stopped: {app.state.serve.load_error}")
