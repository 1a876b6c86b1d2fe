"""GPU throughput of visroute's feature path for CLIP-sized models (run on a machine with a GPU).

For a ViT-B/32- and a ViT-L/14-sized CLIP with random weights (built through transformers, loaded through visroute's
own loader in fp16), on real JPEGs: the raw image-tower forward on pre-decoded tensors (the model's limit) and the
whole path visroute runs in `eval` / `grid` (decode in worker processes + preprocess + forward into the sharded
feature cache). The ratio says whether the GPU is fed; the img/s figures size the Ray plan in docs/scaling.md.

    PYTHONPATH=src python benchmarks/gpu_throughput.py --images ../shared/data/imagenet-sample --out benchmarks/results
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import tempfile
import time
from pathlib import Path

import torch

ARCHS = {  # vision tower sizes of the public checkpoints; text towers as in CLIP
    "ViT-B/32": dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12, patch_size=32),
    "ViT-L/14": dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16, patch_size=14),
}


def build(arch: str, root: str) -> str:
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPTokenizer

    from visroute.models.tiny import write_clip_tokenizer

    d = f"{root}/{arch.replace('/', '-')}"
    write_clip_tokenizer(d)
    vocab = len(CLIPTokenizer.from_pretrained(d))
    cfg = CLIPConfig(text_config=dict(vocab_size=vocab, hidden_size=512, intermediate_size=2048, num_hidden_layers=12,
                                      num_attention_heads=8),
                     vision_config=dict(image_size=224, **ARCHS[arch]), projection_dim=512)
    CLIPModel(cfg).save_pretrained(d)
    CLIPImageProcessor(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224}).save_pretrained(d)
    return d


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", default=str(Path(__file__).resolve().parents[1] / ".." / "shared/data/imagenet-sample"))
    ap.add_argument("--workers", type=int, default=min(14, os.cpu_count() or 2))
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    args = ap.parse_args()
    from visroute.data.datasets import load_dataset
    from visroute.data.images import load_image
    from visroute.features.cache import FeatureCache
    from visroute.models import load_model

    paths = sorted(glob.glob(f"{args.images}/*.JPEG") + glob.glob(f"{args.images}/*.jpg"))
    dev = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    rows = []
    with tempfile.TemporaryDirectory() as d:
        os.environ["VISROUTE_CACHE"] = f"{d}/cache"
        ds_root = Path(d) / "ds" / "x"
        ds_root.mkdir(parents=True)
        for p in paths:
            os.symlink(os.path.abspath(p), ds_root / Path(p).name)
        for arch in ARCHS:
            m = load_model(f"hf:{build(arch, d)}", device="cuda" if torch.cuda.is_available() else "cpu", dtype="auto")
            pix = torch.stack([m.preprocess(load_image(p))["pixel_values"] for p in paths])
            m.encode_images({"pixel_values": pix[:32]})  # warm-up
            sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
            sync()
            t = time.perf_counter()
            for s in range(0, len(pix), args.batch_size):
                m.encode_images({"pixel_values": pix[s : s + args.batch_size]})
            sync()
            raw = len(pix) / (time.perf_counter() - t)
            t = time.perf_counter()
            fs = FeatureCache().encode(m, load_dataset(str(Path(d) / "ds")), batch_size=args.batch_size,
                                       num_workers=args.workers)
            full = fs.images_encoded / (time.perf_counter() - t)
            rows.append({"arch": arch, "device": dev, "dtype": str(m.dtype), "images": len(paths), "workers": args.workers,
                         "raw_forward_img_s": round(raw, 1), "eval_path_img_s": round(full, 1),
                         "ratio": round(full / raw, 3)})
            print(f"{arch} {m.dtype} on {dev}: raw forward {raw:.0f} img/s; decode({args.workers} workers)+preprocess+"
                  f"forward into the feature cache {full:.0f} img/s = {full / raw:.2f} of the forward limit", flush=True)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "gpu_throughput.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
