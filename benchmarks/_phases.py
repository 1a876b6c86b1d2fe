"""Timed phases on a shared machine: wait until other processes are quiet, time a phase (wall, CPU, foreign
load: ``_common.Timed``) and print it as a row with the peak RSS so far. Used by ``bench_router.py``."""

from __future__ import annotations

import os
import resource
import time
from dataclasses import dataclass, field

from _common import Timed

MAX_LOAD, MAX_WAIT, WAIT_LEFT = 1.5, 600.0, 1800.0


def configure(max_load: float, max_wait: float, max_total_wait: float) -> None:
    """How busy the machine may be before a phase starts, and how long to wait for it (per phase, in all)."""
    global MAX_LOAD, MAX_WAIT, WAIT_LEFT
    MAX_LOAD, MAX_WAIT, WAIT_LEFT = max_load, max_wait, max_total_wait


def wait_for_quiet(first: bool = False) -> float:
    """Wait while other processes keep more than MAX_LOAD cores busy (sampled over 3 s), 30 s at a time, at
    most MAX_WAIT s. For the first phase the 1-minute load average itself must also be under MAX_LOAD (later
    on it includes this process's own previous phase). Returns the 1-minute load average at the start."""
    global WAIT_LEFT
    t_start = time.monotonic()
    deadline = t_start + min(MAX_WAIT, max(0.0, WAIT_LEFT))
    while True:
        with Timed() as t:
            time.sleep(3.0)
        la = os.getloadavg()[0]
        busy = t.foreign > MAX_LOAD or (first and la > MAX_LOAD)
        if not busy or time.monotonic() >= deadline:
            WAIT_LEFT -= time.monotonic() - t_start
            if busy:
                print(f"  [still busy after {time.monotonic() - t_start:.0f}s: load1 {la:.2f}, foreign {t.foreign:.2f}; measuring anyway]",
                      flush=True)
            return la
        print(f"  [machine busy: load1 {la:.2f}, foreign {t.foreign:.2f} cores; waiting 30 s]", flush=True)
        time.sleep(30.0)


def rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


@dataclass
class Row:
    phase: str
    seconds: float | None
    detail: str = ""
    load1: float | None = None
    foreign: float | None = None
    cpu: float | None = None
    rss: float | None = None
    in_goal: bool = False


@dataclass
class Report:
    rows: list[Row] = field(default_factory=list)

    def add(self, phase, t: Timed | None, detail="", load1=None, in_goal=False, seconds=None) -> Row:
        r = Row(phase, t.seconds if t is not None else seconds, detail, load1, t.foreign if t is not None else None,
                t.cpu if t is not None else None, rss_mib(), in_goal)
        self.rows.append(r)
        s = f"{r.seconds:9.2f} s" if r.seconds is not None else " " * 11
        extra = f"  load1 {load1:.2f} foreign {r.foreign:.2f}" if load1 is not None and r.foreign is not None else ""
        print(f"{phase:<46} {s}  peak RSS {r.rss:8.0f} MiB{extra}  {detail}", flush=True)
        return r


def timed_phase(report: Report, phase: str, fn, detail=None, in_goal=False, first=False):
    la = wait_for_quiet(first)
    with Timed() as t:
        out = fn()
    d = detail(out) if callable(detail) else (detail or "")
    report.add(phase, t, d, la, in_goal)
    return out
