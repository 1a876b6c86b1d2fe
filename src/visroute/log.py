"""The ``visroute`` logger (standard library ``logging``) and the CLI's ``-v`` / ``-q`` switch.

Modules log through ``get_logger(__name__)`` (children of ``visroute``). A library user configures
logging as for any package; with no configuration, warnings reach stderr through logging's
last-resort handler. The CLI calls :func:`configure_logging` once with the verbosity of its flags.
"""

from __future__ import annotations

import logging
import sys

ROOT = "visroute"

#: verbosity (count of -v minus count of -q) -> level of the visroute logger
LEVELS = {-2: logging.CRITICAL, -1: logging.ERROR, 0: logging.WARNING, 1: logging.INFO, 2: logging.DEBUG}


def get_logger(name: str | None = None) -> logging.Logger:
    """The ``visroute`` logger, or its child for a module (``get_logger(__name__)``)."""
    if not name or name == ROOT:
        return logging.getLogger(ROOT)
    return logging.getLogger(name if name.startswith(ROOT + ".") else f"{ROOT}.{name}")


class _CurrentStderr(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at emit time (pytest and notebooks swap it)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property  # type: ignore[override]
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass

    def emit(self, record: logging.LogRecord) -> None:
        """A line printed while a tqdm bar is drawn would be cut into the bar: clear the bars, write, redraw."""
        tqdm_module = sys.modules.get("tqdm")  # never imported here: no bar can be open without it
        if tqdm_module is None or not getattr(tqdm_module.tqdm, "_instances", None):
            return super().emit(record)
        with tqdm_module.tqdm.external_write_mode(file=sys.stderr):
            super().emit(record)


class _Formatter(logging.Formatter):
    """``warning: message`` like the CLI's own lines; with ``-vv`` the module name too."""

    def __init__(self, with_name: bool) -> None:
        super().__init__()
        self.with_name = with_name

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        where = f"{record.name}: " if self.with_name else ""
        return f"{record.levelname.lower()}: {where}{text}"


def level_for(verbosity: int) -> int:
    return LEVELS[max(min(LEVELS), min(max(LEVELS), int(verbosity)))]


def configure_logging(verbosity: int = 0) -> logging.Logger:
    """Send ``visroute`` log records to stderr at the level ``verbosity`` selects.

    0: warnings and errors (the default); 1 (``-v``): progress notes; 2+ (``-vv``): debug detail;
    -1 (``-q``): errors only; -2: nothing below critical. Calling it again replaces the handler it
    installed, so repeated CLI invocations in one process never print a line twice.
    """
    logger = get_logger()
    for h in [h for h in logger.handlers if isinstance(h, _CurrentStderr)]:
        logger.removeHandler(h)
    handler = _CurrentStderr()
    handler.setFormatter(_Formatter(with_name=verbosity >= 2))
    logger.addHandler(handler)
    logger.setLevel(level_for(verbosity))
    logger.propagate = False  # a root handler configured elsewhere would print every line twice
    return logger


class Progress:
    """A progress bar (tqdm: i/N, rate, ETA) on stderr over the items of one long step, with ``failed=`` beside it.

    The house rule for every bar: off with ``progress=False`` (``--no-progress``) and when stderr is not a
    terminal (``disable=None``); a bar opened under another one (a grid cell under the grid's bar) is cleared when
    it closes, a bar on its own stays (``leave=None``). ``done(n, failed)`` counts finished items, failures
    included; ``result(r)`` counts one finished call by its ``ok``.
    """

    def __init__(self, total: int, desc: str, unit: str = "task", enabled: bool = True) -> None:
        from tqdm import tqdm

        self.failed = 0
        self.bar = tqdm(total=total, desc=desc, unit=unit, dynamic_ncols=True, leave=None,
                        disable=None if enabled else True, postfix={"failed": 0})

    def done(self, n: int = 1, failed: int = 0) -> None:
        if failed:
            self.failed += failed
            self.bar.set_postfix(failed=self.failed, refresh=False)
        self.bar.update(n)

    def result(self, res) -> None:
        self.done(1, 0 if res.ok else 1)

    def close(self) -> None:
        self.bar.close()

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
