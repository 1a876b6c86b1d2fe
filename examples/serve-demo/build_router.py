"""Builds the demo's router (``router/``, committed beside this script): an image-aware KNN router over two
generative models, ``small`` and ``large``, trained on six ImageNet-sample photos (animals to ``large``, the rest to
``small``) with the random-tiny image encoder. Its measured pipelines name the demo's upstream (run.py), so
``/v1/route`` and the chat proxy answer offline. Rebuild: ``python examples/serve-demo/build_router.py``."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
DATA = Path(os.environ.get("VISROUTE_SHARED_DATA") or HERE.parents[2] / "shared" / "data")
UPSTREAM = "http://127.0.0.1:8001/v1"
TEXT = "What is in the image?"
TASKS = [("n02123045_tabby", 1), ("n01443537_goldfish", 1), ("n02096051_Airedale", 1),
         ("n03417042_garbage_truck", 0), ("n07753592_banana", 0), ("n04254680_soccer_ball", 0)]


def build(out: Path) -> Path:
    from visroute.pipeline import PipelineSpec
    from visroute.router.decide.bundle import RouterBundle
    from visroute.router.data.images import encode_paths
    from visroute.router.learn.routers import KNNRouter
    from visroute.tasks.model import task_text

    paths = [str(DATA / "imagenet-sample" / f"{name}.JPEG") for name, _ in TASKS]
    prices = {"*": {"input_per_mtok": 1000.0, "output_per_mtok": 4000.0}}
    specs = {m: PipelineSpec(head="vlm", name=m, vlm=f"openai-compatible:{UPSTREAM}#{m}", max_tokens=8,
                             prices=prices, device="cpu").to_dict() for m in ("small", "large")}
    bundle = RouterBundle(KNNRouter(k=1), "knn", ["small", "large"], np.array([0.001, 0.01]), 0.0, "text+image",
                          "random-tiny", {m: {"mcq": s} for m, s in specs.items()}, {"small": "mcq", "large": "mcq"})
    Y = np.array([[1.0 - big, float(big)] for _, big in TASKS], np.float32)
    bundle.router.fit(bundle.featurise([task_text(TEXT)] * len(TASKS), encode_paths("random-tiny", paths)), Y)
    return bundle.save(out)


if __name__ == "__main__":
    print(build(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE / "router"))
