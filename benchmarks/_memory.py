"""Peak memory of a process tree, sampled from outside: the main process's RSS and the whole tree's RSS and PSS
(``smaps_rollup``, so pages shared between worker processes count once in PSS). Used by ``bench_eval.py``, whose
eval runs start worker processes that ``ru_maxrss`` would not see together."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import psutil


@dataclass
class MemPeaks:
    main_rss: int = 0          # bytes, main eval process
    tree_rss: int = 0          # bytes, sum over main + descendants
    tree_pss: int = 0          # bytes, sum over main + descendants
    max_procs: int = 0
    samples: int = 0
    timeline: list = field(default_factory=list)  # (t, main_rss, tree_rss, tree_pss, n_procs)


class TreeSampler(threading.Thread):
    """Poll the process tree under ``root_pid`` (skipping the /usr/bin/time wrapper) every ``interval`` s."""

    def __init__(self, root_pid: int, interval: float, skip_root: bool):
        super().__init__(daemon=True)
        self.root_pid, self.interval, self.skip_root = root_pid, interval, skip_root
        self.peaks = MemPeaks()
        self._halt = threading.Event()
        self.t0 = time.perf_counter()

    def stop(self) -> MemPeaks:
        self._halt.set()
        self.join()
        return self.peaks

    def _main_and_children(self) -> tuple[psutil.Process | None, list[psutil.Process]]:
        try:
            root = psutil.Process(self.root_pid)
            if not self.skip_root:
                return root, root.children(recursive=True)
            kids = root.children(recursive=False)
            if not kids:
                return None, []
            main = kids[0]
            return main, main.children(recursive=True)
        except psutil.Error:
            return None, []

    def run(self) -> None:
        p = self.peaks
        while not self._halt.is_set():
            main, kids = self._main_and_children()
            if main is not None and main.is_running() and main.status() != psutil.STATUS_ZOMBIE:
                main_rss = tree_rss = tree_pss = 0
                n = 0
                for k, proc in enumerate([main] + kids):
                    try:
                        info = proc.memory_full_info()  # reads smaps_rollup: rss, pss, uss
                    except psutil.Error:
                        if k == 0:
                            break  # main process gone: no sample
                        continue
                    n += 1
                    tree_rss += info.rss
                    tree_pss += getattr(info, "pss", info.rss)
                    if k == 0:
                        main_rss = info.rss
                if n and main_rss:
                    p.samples += 1
                    p.main_rss = max(p.main_rss, main_rss)
                    p.tree_rss = max(p.tree_rss, tree_rss)
                    p.tree_pss = max(p.tree_pss, tree_pss)
                    p.max_procs = max(p.max_procs, n)
                    p.timeline.append((round(time.perf_counter() - self.t0, 2), main_rss, tree_rss, tree_pss, n))
            self._halt.wait(self.interval)
