"""What every benchmark shares: where the data is (relative to the repository), timing with the machine's load
recorded alongside, and the JSON results file.

The machine may be shared. Every figure is stored with the 1-minute load average read just before it and the
"foreign load": the cores that processes other than this one (and its children) kept busy while it ran, from
/proc/stat minus this process tree's CPU time. A figure taken at a foreign load well above 0 is pessimistic.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data"
RESULTS = REPO / "benchmarks" / "results"


def data_dir(arg: str | None) -> Path:
    """``--data`` if given, else $VISROUTE_SHARED_DATA, else ../shared/data beside the repository."""
    path = Path(arg or os.environ.get("VISROUTE_SHARED_DATA") or DEFAULT_DATA).expanduser()
    if not path.is_dir():
        raise SystemExit(f"data folder {path} not found: pass --data DIR (the folder holding imagenet-sample/, "
                         "cifar10-test/, descriptions/)")
    return path


def _busy() -> tuple[float, float]:
    """(CPU seconds the whole machine has been busy, CPU seconds of this process and its reaped children)."""
    with open("/proc/stat", encoding="ascii") as f:
        user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, f.readline().split()[1:9])
    machine = (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")
    own = sum(r.ru_utime + r.ru_stime for r in (resource.getrusage(resource.RUSAGE_SELF),
                                                 resource.getrusage(resource.RUSAGE_CHILDREN)))
    return machine, own


class Timed:
    """Wall seconds of a block, this process tree's CPU seconds, the load average and the foreign load."""

    def __enter__(self) -> "Timed":
        self.load1 = os.getloadavg()[0]
        self._b = _busy()
        self._t = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        self.seconds = time.perf_counter() - self._t
        machine, own = _busy()
        self.cpu = own - self._b[1]
        self.foreign = max(0.0, (machine - self._b[0]) - self.cpu) / max(self.seconds, 1e-9)

    def record(self, **extra) -> dict:
        return {"seconds": self.seconds, "cpu_seconds": self.cpu, "load1": round(self.load1, 2),
                "foreign_load": round(self.foreign, 2), **extra}


def best_of(fn, repeat: int) -> dict:
    """Run ``fn`` ``repeat`` times; the fastest run's record (its load figures), plus every run's seconds."""
    runs = []
    for _ in range(repeat):
        with Timed() as t:
            fn()
        runs.append(t.record())
    best = min(runs, key=lambda r: r["seconds"])
    return {**best, "all_seconds": [round(r["seconds"], 4) for r in runs],
            "max_foreign_load": max(r["foreign_load"] for r in runs)}


def machine() -> dict:
    import numpy

    info = {"python": sys.version.split()[0], "cpus": os.cpu_count(), "platform": platform.platform(),
            "numpy": numpy.__version__, "load_at_start": [round(x, 2) for x in os.getloadavg()]}
    try:
        info["affinity"] = len(os.sched_getaffinity(0))
    except AttributeError:
        pass
    try:
        import torch
        import transformers

        info.update(torch=torch.__version__, transformers=transformers.__version__, torch_threads=torch.get_num_threads())
    except ImportError:
        pass
    return info


def write_results(name: str, doc: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    doc = {"benchmark": name, "command": " ".join([Path(sys.executable).name, *sys.argv]), "machine": machine(), **doc}
    path.write_text(json.dumps(doc, indent=1, default=float) + "\n")
    print(f"\nwrote {path.relative_to(REPO)}")
    return path


def ratio(a: float | None, b: float | None) -> float | None:
    return None if not a or not b else a / b


# -- random-weight CLIP models written to a folder (shared by bench_classify and bench_serve) ---------------------
def build_b32(directory: Path) -> Path:
    """A random CLIP with ViT-B/32's shapes (char-level tokenizer, like visroute's tiny models)."""
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPTokenizer

    from visroute.models.tiny import write_clip_tokenizer

    directory.mkdir(parents=True, exist_ok=True)
    write_clip_tokenizer(directory)
    vocab = len(CLIPTokenizer.from_pretrained(directory))
    config = CLIPConfig(
        text_config=dict(vocab_size=vocab, hidden_size=512, intermediate_size=2048, num_hidden_layers=12,
                         num_attention_heads=8, max_position_embeddings=77, bos_token_id=vocab - 2,
                         eos_token_id=vocab - 1, pad_token_id=vocab - 1),
        vision_config=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                           image_size=224, patch_size=32),
        projection_dim=512)
    torch.manual_seed(0)
    CLIPModel(config).save_pretrained(directory)
    CLIPImageProcessor(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224}).save_pretrained(directory)
    return directory


def build_tiny(directory: Path) -> Path:
    from visroute.models.tiny import build_tiny_clip

    return build_tiny_clip(directory)


CLIP_BUILDERS = {"b32": build_b32, "tiny": build_tiny}
