"""How far ``decode: fast`` (and ``gpu``, where a CUDA device is present) moves zero-shot results from ``exact``.

For each tiny model family (transformers CLIP, SigLIP, and an open_clip CLIP; random weights, built locally, 224-px
input) on the shared ImageNet sample (one image per class, the 1000 class names as labels, one template): the
largest absolute difference of any class probability between the mode and ``exact``, the mean of the per-image
largest difference, and top-1 agreement. These are the figures the README quotes.

    python benchmarks/decode_diff.py [--data ../shared/data] [--limit 1000] [--smoke]
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

OPENCLIP_CFG = {"embed_dim": 32,
                "vision_cfg": {"image_size": 224, "layers": 2, "width": 64, "head_width": 32, "patch_size": 32},
                "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2}}


def openclip_tiny(root: Path) -> str:
    import open_clip
    from safetensors.torch import save_file

    d = root / "openclip"
    d.mkdir()
    (d / "open_clip_config.json").write_text(json.dumps({"model_cfg": OPENCLIP_CFG, "preprocess_cfg": {}}))
    torch.manual_seed(4)
    model = open_clip.create_model("local-dir:" + str(d))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(d / "open_clip_model.safetensors"))
    return f"openclip:local-dir:{d}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data")
    ap.add_argument("--limit", type=int, default=1000)
    ap.add_argument("--smoke", action="store_true", help="32 images (seconds; writes nothing)")
    args = ap.parse_args()
    from _common import data_dir, write_results

    from visroute.features import encode_image_files
    from visroute.heads import ZeroShotClassifier
    from visroute.models import load_model

    limit = 32 if args.smoke else args.limit
    images = data_dir(args.data) / "imagenet-sample"
    rows = list(csv.DictReader(open(images / "labels.csv", encoding="utf-8")))[:limit]
    paths = [images / r["file"] for r in rows]
    labels = list(dict.fromkeys(r["classname"] for r in rows))
    modes = ["fast"] + (["gpu"] if torch.cuda.is_available() else [])
    out = {"images": len(paths), "labels": len(labels), "families": {}}
    with tempfile.TemporaryDirectory() as d:
        for family, spec in (("clip", "random-tiny:clip"), ("siglip", "random-tiny:siglip"),
                             ("openclip", openclip_tiny(Path(d)))):
            model = load_model(spec, device="cpu")
            head = ZeroShotClassifier(model, ["a photo of a {c}."]).fit(labels)
            exact = torch.from_numpy(head.predict_proba(encode_image_files(model, paths, decode="exact").embeddings))
            res = out["families"][family] = {"spec": spec.split(":local-dir:")[0]}
            for mode in modes:
                p = torch.from_numpy(head.predict_proba(encode_image_files(model, paths, decode=mode).embeddings))
                diff = (p - exact).abs().amax(dim=1)
                res[mode] = {"max_prob_diff": float(diff.max()), "mean_max_prob_diff": float(diff.mean()),
                             "top1_agreement": float((p.argmax(1) == exact.argmax(1)).float().mean())}
                print(f"{family:9s} {mode}: max prob diff {res[mode]['max_prob_diff']:.2e} (mean per image "
                      f"{res[mode]['mean_max_prob_diff']:.2e}), top-1 agreement {res[mode]['top1_agreement']:.4f} "
                      f"on {len(paths)} images", flush=True)
    if not args.smoke:
        write_results("decode_diff", out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
