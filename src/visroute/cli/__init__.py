"""Command-line interface: ``visroute <command>``.

Each command parses its arguments, calls one library function and prints; the modules here import only typer at
load time, so ``visroute --help``, ``--version`` and argument errors never load torch or transformers.
Exit codes: 0 all done, 1 some items skipped or runs failed, 2 usage or input error.
"""

from __future__ import annotations

from typing import Annotated

import typer

from visroute.cli import cache, classify, describe, evaluate, grid, reproduce, route, serve
from visroute.cli._common import EXIT_OK, EXIT_SOME_SKIPPED, EXIT_USAGE, VisrouteGroup, set_verbosity

__all__ = ["app", "main", "EXIT_OK", "EXIT_SOME_SKIPPED", "EXIT_USAGE"]

app = typer.Typer(cls=VisrouteGroup, add_completion=False, no_args_is_help=True, rich_markup_mode=None,
                  pretty_exceptions_show_locals=False, help="Image classification with vision-language models.")


def _print_version(value: bool) -> None:
    if value:
        from visroute import __version__

        typer.echo(f"visroute {__version__}")
        raise typer.Exit(EXIT_OK)


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", is_eager=True, callback=_print_version,
                                          help="Print the version and exit.")] = False,
    verbose: Annotated[int, typer.Option("--verbose", "-v", count=True, help="More log output (repeat for more).")] = 0,
    quiet: Annotated[int, typer.Option("--quiet", "-q", count=True, help="Errors only (-qq: nothing but fatal).")] = 0,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks instead of one-line errors.")] = False,
) -> None:
    """Image classification with vision-language models."""
    from visroute.log import configure_logging

    set_verbosity(verbose - quiet)
    configure_logging(verbose - quiet)


app.command()(classify.classify)
app.command()(cache.models)
app.command("eval")(evaluate.eval_cmd)
app.command()(evaluate.report)
app.command()(describe.describe)
app.command()(describe.explain)
app.command()(serve.serve)
app.command()(reproduce.reproduce)
app.add_typer(grid.app, name="grid")
app.add_typer(route.app, name="route")
app.add_typer(cache.app, name="cache")


def main() -> None:
    """Console-script entry point (``visroute = "visroute.cli:main"``)."""
    app()
