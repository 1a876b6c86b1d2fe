"""Make a CLIP_benchmark reference for the equivalence tests: CLIP_benchmark's own zero-shot evaluation of the tests'
tiny open_clip checkpoint on a shared dataset, with its metrics and each image's top-5 classes.

Run it in a throwaway venv that has CLIP_benchmark beside visroute's dependencies (visroute itself is not used):

    python3 -m venv /tmp/cb && echo "import site; site.addsitedir('$PWD/.venv/lib/python3.11/site-packages')" \\
        > /tmp/cb/lib/python3.11/site-packages/visroute_deps.pth
    /tmp/cb/bin/pip install --no-deps clip_benchmark==1.6.2 numpy==2.2.6   # 1.6.2 needs numpy < 2.3
    /tmp/cb/bin/python scripts/make_clip_benchmark_fixture.py imagenet-sample \\
        tests/fixtures/clip_benchmark_imagenet_sample_tiny_openclip.json

The checkpoint is built exactly as ``tests/conftest.py::tiny_openclip_dir`` builds it (its config, seed 4); its
fingerprint is stored so the test can prove it evaluates the same weights.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data"
sys.path.insert(0, str(ROOT))


def tiny_openclip(d: Path):
    """The tests' tiny open_clip model, saved to ``d`` and loaded back with its validation transform."""
    import open_clip
    import torch
    from safetensors.torch import save_file

    from tests.conftest import TINY_OPENCLIP_CFG

    (d / "open_clip_config.json").write_text(json.dumps({"model_cfg": TINY_OPENCLIP_CFG, "preprocess_cfg": {}}))
    torch.manual_seed(4)
    model = open_clip.create_model("local-dir:" + str(d))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(d / "open_clip_model.safetensors"))
    model, _, preprocess = open_clip.create_model_and_transforms("local-dir:" + str(d))
    return model.eval(), preprocess, open_clip.get_tokenizer("local-dir:" + str(d))


def fingerprint(d: Path) -> str:
    import numpy as np
    from safetensors.torch import load_file

    state = load_file(str(d / "open_clip_model.safetensors"))
    h = hashlib.sha256()
    for k in sorted(state):
        h.update(k.encode())
        h.update(np.ascontiguousarray(state[k].float().numpy()).tobytes())
    return h.hexdigest()


def imagenet_sample_folder(root: Path) -> tuple[Path, list[str], list[str]]:
    """One folder per WordNet id (sorted, so the folder order is ImageNet's class order); ImageNet's 1000 class
    names and 80 templates from CLIP_benchmark's files."""
    names = json.loads((DATA / "classnames" / "en_classnames.json").read_text())["imagenet1k"]
    templates = json.loads((DATA / "classnames" / "en_zeroshot_classification_templates.json").read_text())["imagenet1k"]
    for f in sorted((DATA / "imagenet-sample").glob("*.JPEG")):
        (root / f.name.split("_")[0]).mkdir(parents=True, exist_ok=True)
        (root / f.name.split("_")[0] / f.name).symlink_to(f)
    return root, names, templates


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dataset", choices=["imagenet-sample"])
    ap.add_argument("out", type=Path)
    args = ap.parse_args()
    import clip_benchmark
    import open_clip
    import torch
    import torchvision
    from clip_benchmark.metrics import zeroshot_classification as zsc

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(tmp) / "model"
        model_dir.mkdir()
        model, preprocess, tokenizer = tiny_openclip(model_dir)
        folder, classnames, templates = imagenet_sample_folder(Path(tmp) / "images")
        dataset = torchvision.datasets.ImageFolder(str(folder), transform=preprocess)
        loader = torch.utils.data.DataLoader(dataset, batch_size=64, shuffle=False, num_workers=0)
        clf = Path(tmp) / "classifier.pt"
        metrics = zsc.evaluate(model, loader, tokenizer, classnames, templates, "cpu", amp=False, save_clf=str(clf))
        logits, _ = zsc.run_classification(model, torch.load(clf), loader, "cpu", amp=False)
        doc = {"clip_benchmark_version": clip_benchmark.__version__ if hasattr(clip_benchmark, "__version__")
               else "1.6.2", "open_clip_version": open_clip.__version__, "torch_version": torch.__version__,
               "torchvision_version": torchvision.__version__, "model_fingerprint_sha256": fingerprint(model_dir),
               "dataset": "imagenet-sample: one folder per WordNet id, sorted", "n_images": len(dataset),
               "templates": "en_zeroshot_classification_templates.json:imagenet1k",
               "metrics": {k: float(v) for k, v in metrics.items()},
               "files": [Path(p).name for p, _ in dataset.samples],
               "top5": logits.topk(5, dim=1).indices.tolist(),
               "how": "scripts/make_clip_benchmark_fixture.py, CLIP_benchmark's zeroshot_classification.evaluate "
                      "(amp off, CPU) in a throwaway venv beside visroute's dependencies"}
    args.out.write_text(json.dumps(doc) + "\n")
    print(f"wrote {args.out}: {doc['metrics']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
