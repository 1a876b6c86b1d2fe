"""``visroute serve``: the HTTP service (classify, route, an OpenAI-compatible routing proxy, a web page)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from visroute.cli._common import quiet_libraries

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
    from visroute.errors import MissingExtraError

    try:
        from visroute.serve.run import ServeOptions, run_service
    except ImportError as e:
        raise MissingExtraError("serve", e.name or "fastapi", "visroute serve") from e
    quiet_libraries()
    run_service(ServeOptions(config, host, port, api_keys_file, open_mode, graceful_s, workers, engine, replicas,
                           num_gpus, ray_address), echo=lambda line: typer.echo(line, err=True))
