"""``visroute grid run``: models x datasets x prompt variants -> routing records."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from visroute.cli._common import Actors, EndpointConcurrency, EngineName, NumGpus, RayAddress, make_engine, quiet_libraries

app = typer.Typer(help="Benchmark grids: models x datasets x prompt variants -> routing records.", no_args_is_help=True, rich_markup_mode=None)


@app.command("run")
def grid_run(grid_file: Annotated[Path, typer.Argument(help="GRID.yaml (every field: docs/grid.md).")],
             progress: Annotated[bool, typer.Option()] = True, engine: EngineName = None, ray_address: RayAddress = None,
             actors: Actors = None, num_gpus: NumGpus = None, endpoint_concurrency: EndpointConcurrency = None) -> None:
    """Run every cell not yet done (resumable) and write <output>/records.parquet.

    --engine (or `engine:` in the grid file): local, or ray: contrastive cells encode on a Ray actor pool, VLM/LLM
    cells run as Ray tasks under the per-endpoint limit; records are identical to the local engine's."""
    import pyarrow.parquet as pq

    from visroute.engine import EngineOptions
    from visroute.router.data.grid import GridSpec, run_grid

    quiet_libraries()
    grid = GridSpec.load(grid_file)
    base = EngineOptions.from_dict(grid.engine or "local", f"{grid_file}: engine")
    eng = make_engine(engine, ray_address, actors, num_gpus, endpoint_concurrency, base)
    try:
        target = run_grid(grid, progress=progress, log=lambda m: typer.echo(m, err=True), engine=eng)
    finally:
        eng.shutdown()
    t = pq.read_table(target, columns=["model"])
    typer.echo(f"wrote {target}: {t.num_rows} records, models: {', '.join(sorted(set(t.column('model').to_pylist())))}")
