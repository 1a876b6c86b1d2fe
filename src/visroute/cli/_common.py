"""What every command shares: exit codes, message helpers, common option types, and the root command group that
turns a ``VisrouteError`` into one red line and exit code 2 (``--debug``: the traceback first, same exit code).

Only typer and the standard library are imported here: ``--help``, ``--version`` and argument errors must stay
fast, so each command imports the library inside its body.
"""

from __future__ import annotations

import contextvars
import dataclasses
import functools
import inspect
import os
from pathlib import Path
from typing import Annotated, Any, Callable, Optional, get_type_hints

import typer
from typer.core import TyperGroup

from visroute.errors import VisrouteError

EXIT_OK, EXIT_SOME_SKIPPED, EXIT_USAGE = 0, 1, 2

#: this invocation's -v/-q level: a context variable, so concurrent invocations (threads, tests) never share it
_VERBOSITY: contextvars.ContextVar[int] = contextvars.ContextVar("visroute_verbosity", default=0)


def set_verbosity(level: int) -> None:
    """Called by the root callback: count of -v minus count of -q."""
    _VERBOSITY.set(level)


def verbosity() -> int:
    return _VERBOSITY.get()


Json = Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")]
Device = Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N or mps.")]
Dtype = Annotated[str, typer.Option(help="auto, fp32, fp16 or bf16.")]
BatchSize = Annotated[int, typer.Option(min=1, help="Images per forward pass.")]
Workers = Annotated[Optional[int], typer.Option(min=0, help="Decoding processes (default: one per core).")]
def _decode_choice(value: str) -> str:
    if value not in ("exact", "fast", "gpu"):
        raise typer.BadParameter(f"{value!r} is not one of 'exact', 'fast', 'gpu'")
    return value


Decode = Annotated[str, typer.Option("--decode", callback=_decode_choice, metavar="[exact|fast|gpu]",
                                     help="How images become model inputs: exact (default: the model's own "
                                          "preprocessing, bit for bit), fast (reduced-size JPEG decoding + torch "
                                          "resize; pixels within ~1 level) or gpu (nvJPEG on the CUDA device).")]
RouterDir = Annotated[Path, typer.Option("--router", help="Trained router directory.")]
TableDir = Annotated[Path, typer.Argument(help="Routing table directory.")]
# --engine ray (visroute.engine): where the heavy stages run; none of these changes a result
EngineName = Annotated[Optional[str], typer.Option("--engine", help="local (default) or ray.")]
RayAddress = Annotated[Optional[str], typer.Option(help="Ray cluster to join with --engine ray (default: $RAY_ADDRESS, "
                                                        "else a new local Ray).")]
Actors = Annotated[Optional[int], typer.Option(min=1, help="--engine ray: encoding actors (default: fill the cluster).")]
NumGpus = Annotated[Optional[float], typer.Option(min=0, help="--engine ray: GPUs per encoding actor (0.5: two per GPU; "
                                                               "default 0).")]
EndpointConcurrency = Annotated[Optional[int], typer.Option(min=1, help="--engine ray: requests in flight to one VLM/LLM "
                                                                        "endpoint from the whole cluster (default 8).")]


def make_engine(engine: str | None, ray_address: str | None = None, actors: int | None = None,
                num_gpus: float | None = None, endpoint_concurrency: int | None = None, base: Any = None,
                concurrency: int | None = None) -> Any:
    """The engine the ``--engine`` options name (``visroute.engine``), over ``base`` options (a grid file's); an
    option left out keeps the base value. Ray is imported only for ``--engine ray``."""
    import dataclasses

    from visroute.engine import EngineOptions, make_engine as build

    given = {"engine": engine, "address": ray_address, "actors": actors, "num_gpus": num_gpus,
             "endpoint_concurrency": endpoint_concurrency, "concurrency": concurrency}
    return build(dataclasses.replace(base or EngineOptions(), **{k: v for k, v in given.items() if v is not None}))


def quiet_libraries() -> None:
    """Silence transformers' warnings and progress bars unless the user asked for -vv."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if verbosity() >= 2:
        return
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def warn(message: str) -> None:
    typer.secho(message, err=True, fg=typer.colors.YELLOW)


def error(message: str) -> None:
    typer.secho(f"error: {message}", err=True, fg=typer.colors.RED)


def exit_code(n_done: int, n_failed: int) -> int:
    """0: everything ran; 1: some runs failed or items were skipped; 2: nothing ran because of errors."""
    return EXIT_USAGE if n_failed and not n_done else (EXIT_SOME_SKIPPED if n_failed else EXIT_OK)


class VisrouteGroup(TyperGroup):
    """Root command group: a ``VisrouteError`` from any command is printed as one line (exit 2), not a traceback;
    with ``--debug`` the traceback is printed above that line."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        # one vocabulary: every command writes to --out; --output stays accepted (hidden) for old scripts
        end = args.index("--") if "--" in args else len(args)
        args = [("--out" + a[len("--output"):]) if i < end and (a == "--output" or a.startswith("--output="))
                else a for i, a in enumerate(args)]
        return super().parse_args(ctx, args)

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except VisrouteError as e:
            _fail(ctx, str(e), getattr(e, "exit_code", EXIT_USAGE))
        except (OSError, UnicodeDecodeError) as e:
            # a file a user named that cannot be read (missing, a folder, no permission, not text): still one line
            what = f"{e.strerror}: {e.filename}" if isinstance(e, OSError) and e.strerror and e.filename else str(e)
            _fail(ctx, " ".join(what.split())[:300])


def _fail(ctx: Any, message: str, code: int = EXIT_USAGE) -> None:
    if ctx.params.get("debug"):
        import traceback

        typer.echo(traceback.format_exc().rstrip(), err=True)
    error(message)
    raise typer.Exit(code) from None


def options_from(cls: type) -> Callable[[Callable[[Any], None]], Callable[..., None]]:
    """Declare a command's options as the fields of a dataclass (``Annotated`` types, defaults): the command
    receives one instance, so a command with many flags keeps a short body and its options stay one object."""
    hints = get_type_hints(cls, include_extras=True)
    params = [inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, annotation=hints[f.name],
                                default=inspect.Parameter.empty if f.default is dataclasses.MISSING else f.default)
              for f in dataclasses.fields(cls)]

    def wrap(fn: Callable[[Any], None]) -> Callable[..., None]:
        @functools.wraps(fn)
        def command(**kwargs: Any) -> None:
            return fn(cls(**kwargs))

        # typer reads this signature (inspect stops unwrapping at __signature__), not fn's single argument

        command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
        command.__annotations__ = {}
        return command

    return wrap
