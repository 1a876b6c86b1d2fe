"""Cancelling blocking work whose result nobody will read (a served request answered 504, or whose client left).

A ``CancelToken`` is bound to the current context (``bound``); ``asyncio.to_thread`` copies the context into its
worker thread, so the blocking work of a request sees its request's token without any signature changing. Work
checks the token between stages (``check``: raises ``Cancelled``), and an HTTP call registers an abort with
``on_cancel`` that shuts its socket down, so a blocked read returns at once and the upstream sees the connection
close. A local ``generate`` stops at its next token (``stopping_criteria``). What cannot stop is a single C call
already running (one torch forward, one image decode): it ends on its own and its result is dropped.

Without a bound token (the CLI, the Python API) every check is a no-op.
"""

from __future__ import annotations

import contextlib
import contextvars
import threading
import time
from collections.abc import Callable, Iterator


class Cancelled(BaseException):
    """The work was cancelled: nobody is waiting for it. A BaseException, like ``asyncio.CancelledError``, so the
    ``except Exception`` that records a failed call as a failed result never turns it into an error sample."""


class CancelToken:
    """Set once, from any thread; callbacks registered with ``on_cancel`` run once, in the cancelling thread."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self._lock = threading.Lock()
        self._callbacks: list[Callable[[], None]] = []
        self.reason: str | None = None
        self.cancelled_at: float | None = None  # time.monotonic() of the cancellation

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def cancel(self, reason: str = "cancelled") -> None:
        with self._lock:
            if self._event.is_set():
                return
            self.reason, self.cancelled_at = reason, time.monotonic()
            self._event.set()
            callbacks, self._callbacks = self._callbacks, []
        for fn in callbacks:
            with contextlib.suppress(Exception):
                fn()

    def check(self) -> None:
        """Raise ``Cancelled`` once the token is set."""
        if self._event.is_set():
            raise Cancelled(self.reason or "cancelled")

    def wait(self, seconds: float) -> bool:
        """Sleep up to ``seconds``; True (at once) when cancelled meanwhile."""
        return self._event.wait(max(0.0, seconds))

    def on_cancel(self, fn: Callable[[], None]) -> Callable[[], None]:
        """Run ``fn`` on cancellation (at once if already cancelled); returns a function that unregisters it."""
        with self._lock:
            if not self._event.is_set():
                self._callbacks.append(fn)
                return lambda: self._discard(fn)
        with contextlib.suppress(Exception):
            fn()
        return lambda: None

    def _discard(self, fn) -> None:
        with self._lock, contextlib.suppress(ValueError):
            self._callbacks.remove(fn)


_CURRENT: contextvars.ContextVar[CancelToken | None] = contextvars.ContextVar("visroute_cancel", default=None)


def current() -> CancelToken | None:
    """The token of the work running in this context (None outside a cancellable request)."""
    return _CURRENT.get()


def check() -> None:
    """Raise ``Cancelled`` when the current context's work has been cancelled; a no-op without a token."""
    tok = _CURRENT.get()
    if tok is not None:
        tok.check()


def cancellable_sleep(seconds: float) -> None:
    """``time.sleep`` that ends at once, raising ``Cancelled``, when the current context's work is cancelled."""
    tok = _CURRENT.get()
    if tok is None:
        time.sleep(seconds)
        return
    tok.wait(seconds)
    tok.check()


@contextlib.contextmanager
def bound(token: CancelToken | None) -> Iterator[CancelToken | None]:
    """Make ``token`` the current one for this block (tasks created and threads started with ``to_thread`` inside it
    inherit it)."""
    reset = _CURRENT.set(token)
    try:
        yield token
    finally:
        _CURRENT.reset(reset)


def watch(abort: Callable[[], None]) -> Callable[[], None]:
    """Run ``abort`` (e.g. shut a socket down) when the current context's work is cancelled, at once if it already
    is. Returns ``release``: it stops watching, then raises ``Cancelled`` if the work was cancelled, so whatever the
    abort made the call raise is replaced by ``Cancelled``. Both are no-ops without a token."""
    tok = _CURRENT.get()
    if tok is None:
        return lambda: None
    undo = tok.on_cancel(abort)

    def release() -> None:
        undo()
        tok.check()

    return release


def generate_kwargs() -> dict:
    """Keyword arguments for a transformers ``generate`` that make it stop at its next token once the current
    context's work is cancelled (none without a token); call ``check()`` after it."""
    stop = stopping_criteria()
    return {} if stop is None else {"stopping_criteria": stop}


def stopping_criteria():
    """A transformers ``StoppingCriteriaList`` that ends a local ``generate`` at its next token once the current
    token is cancelled (None without a token). The caller then calls ``check()`` to raise instead of returning the
    cut answer."""
    tok = _CURRENT.get()
    if tok is None:
        return None
    import torch
    from transformers import StoppingCriteria, StoppingCriteriaList

    class _Stop(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            return torch.full((input_ids.shape[0],), tok.cancelled, dtype=torch.bool, device=input_ids.device)

    return StoppingCriteriaList([_Stop()])
