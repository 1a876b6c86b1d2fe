"""``visroute grid run``: models x datasets x prompt variants -> routing records."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from visroute.cli._common import quiet_libraries

app = typer.Typer(help="Benchmark grids: models x datasets x prompt variants -> routing records.", no_args_is_help=True)


@app.command("run")
def grid_run(grid_file: Annotated[Path, typer.Argument(help="GRID.yaml (see visroute.router.grid).")],
             progress: Annotated[bool, typer.Option()] = True) -> None:
    """Run every cell not yet done (resumable) and write <output>/records.parquet."""
    import pyarrow.parquet as pq

    from visroute.router.grid import GridSpec, run_grid

    quiet_libraries()
    target = run_grid(GridSpec.load(grid_file), progress=progress, log=lambda m: typer.echo(m, err=True))
    t = pq.read_table(target, columns=["model"])
    typer.echo(f"wrote {target}: {t.num_rows} records, models: {', '.join(sorted(set(t.column('model').to_pylist())))}")
