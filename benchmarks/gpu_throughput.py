"""Steady-state GPU throughput of visroute's eval path against the model's forward limit, per decode mode.

Design (what the 240-image figure this replaces did not do): at least ``--images`` JPEGs (default 20,000: the
shared ImageNet sample repeated under distinct file names, so nothing is cached by name), a warm model in fp16,
batches of ``--batch-size`` (default 256). For a ViT-B/32- and a ViT-L/14-sized CLIP with random weights (built
through transformers, loaded through visroute's own loader):

* ``forward limit``: ``encode_images`` on the same batches, decoded and preprocessed beforehand and already on the
  device, timed after ``--warmup`` batches: what the model alone can do;
* ``eval path`` per ``--decode`` mode (gpu, exact, fast): ``FeatureCache.encode`` over the whole set, the path
  ``visroute eval`` runs (decode, preprocess, forward, sharded cache), timed after a warm-up run on the first
  ``--warmup`` batches; ``exact`` and ``fast`` decode on every host core, ``gpu`` decodes with nvJPEG.

Goals: ``gpu`` reaches 0.5 of the forward limit for ViT-B/32 and 0.85 for ViT-L/14. The load average and the
images skipped are recorded with every figure; ``gpu`` logs how many images fell back to the CPU decoder.

    python benchmarks/gpu_throughput.py [--images 20000] [--decode gpu,exact,fast] [--out benchmarks/results]
    python benchmarks/gpu_throughput.py --smoke     # seconds, on the CPU, tiny model: a check that it runs
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

ARCHS = {  # vision tower sizes of the public checkpoints; text towers as in CLIP
    "ViT-B/32": dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12, patch_size=32),
    "ViT-L/14": dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16, patch_size=14),
    "tiny": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, patch_size=32),
}


def build(arch: str, root: str) -> str:
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPTokenizer

    from visroute.models.tiny import write_clip_tokenizer

    d = f"{root}/{arch.replace('/', '-')}"
    write_clip_tokenizer(d)
    vocab = len(CLIPTokenizer.from_pretrained(d))
    text = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2) if arch == "tiny" \
        else dict(hidden_size=512, intermediate_size=2048, num_hidden_layers=12, num_attention_heads=8)
    cfg = CLIPConfig(text_config=dict(vocab_size=vocab, **text), vision_config=dict(image_size=224, **ARCHS[arch]),
                     projection_dim=32 if arch == "tiny" else 512)
    CLIPModel(cfg).save_pretrained(d)
    CLIPImageProcessor(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224}).save_pretrained(d)
    return d


def repeated_jpegs(sample: Path, n: int, folder: Path) -> list[Path]:
    """``n`` JPEG names: the sample's files linked again and again under distinct names (one class folder)."""
    src = sorted(p for p in sample.iterdir() if p.suffix.lower() in (".jpeg", ".jpg"))
    folder.mkdir(parents=True)
    out = []
    for i in range(n):
        link = folder / f"{i:06d}_{src[i % len(src)].name}"
        os.symlink(src[i % len(src)].resolve(), link)
        out.append(link)
    return out


def forward_limit(m, paths: list[Path], batch_size: int, warmup: int, sync) -> float:
    """img/s of the forward pass alone on device-resident fp16 batches (the same images, preprocessed once)."""
    from visroute.data.images import load_image

    n_batches = max(warmup + 2, min(len(paths) // batch_size, 20))
    pix = torch.stack([m.preprocess(load_image(p))["pixel_values"] for p in paths[: batch_size]])
    batch = {"pixel_values": pix.to(m.device, dtype=m.dtype)}
    for _ in range(warmup):
        m.encode_images(batch)
    sync()
    t = time.perf_counter()
    for _ in range(n_batches):
        m.encode_images(batch)
    sync()
    return n_batches * batch_size / (time.perf_counter() - t)


def eval_path(m, root: Path, n: int, batch_size: int, workers: int, decode: str, warmup_images: int, sync) -> dict:
    from visroute.data.datasets import load_dataset, spread_subset
    from visroute.features.cache import FeatureCache

    ds = load_dataset(str(root))
    cache_dir = Path(tempfile.mkdtemp(prefix=f"gpu-tp-{decode}-"))
    try:  # warm-up: workers, nvJPEG handles, kernels (a separate cache entry, never reused by the timed run)
        FeatureCache(cache_dir / "warm").encode(m, spread_subset(ds, warmup_images), batch_size=batch_size,
                                                num_workers=workers, decode=decode)
    except Exception as e:  # noqa: BLE001 - a mode this machine cannot run is reported, not fatal
        return {"decode": decode, "error": str(e).splitlines()[0]}
    sync()
    load1 = os.getloadavg()[0]
    t = time.perf_counter()
    fs = FeatureCache(cache_dir / "timed").encode(m, ds, batch_size=batch_size, num_workers=workers, decode=decode)
    sync()
    secs = time.perf_counter() - t
    return {"decode": decode, "images": fs.images_encoded, "skipped": len(fs.skipped), "seconds": round(secs, 2),
            "img_s": round(fs.images_encoded / secs, 1), "load1": round(load1, 2)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", help="folder with imagenet-sample/ (default: ../shared/data beside the repo)")
    ap.add_argument("--images", type=int, default=20_000)
    ap.add_argument("--archs", default="ViT-B/32,ViT-L/14")
    ap.add_argument("--decode", default="gpu,exact,fast")
    ap.add_argument("--workers", type=int, default=None, help="decoding processes (default: every host core, max 32)")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--warmup", type=int, default=3, help="batches run before timing")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    ap.add_argument("--smoke", action="store_true", help="tiny model, 64 images, CPU allowed: seconds, writes nothing")
    args = ap.parse_args()
    from _common import data_dir

    from visroute.models import load_model

    cuda = torch.cuda.is_available()
    if args.smoke:
        args.images, args.archs, args.batch_size, args.warmup = 64, "tiny", 16, 1
        args.decode = ",".join(d for d in args.decode.split(",") if d != "gpu" or cuda)
    elif not cuda:
        raise SystemExit("gpu_throughput.py measures a GPU and this machine has none (--smoke runs it on the CPU)")
    workers = args.workers if args.workers is not None else min(32, len(os.sched_getaffinity(0)))
    if args.smoke:
        workers = min(workers, 2)
    dev = torch.cuda.get_device_name(0) if cuda else "cpu"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    rows = []
    with tempfile.TemporaryDirectory() as d:
        os.environ["VISROUTE_CACHE"] = f"{d}/cache"
        paths = repeated_jpegs(data_dir(args.data) / "imagenet-sample", args.images, Path(d) / "ds" / "x")
        for arch in args.archs.split(","):
            m = load_model(f"hf:{build(arch, d)}", device="cuda" if cuda else "cpu", dtype="fp16" if cuda else "fp32")
            limit = forward_limit(m, paths, args.batch_size, args.warmup, sync)
            row = {"arch": arch, "device": dev, "dtype": str(m.dtype), "images": len(paths), "batch_size": args.batch_size,
                   "workers": workers, "host_cores": os.cpu_count(), "forward_limit_img_s": round(limit, 1), "modes": []}
            print(f"{arch} {m.dtype} on {dev}: forward limit {limit:.0f} img/s (batch {args.batch_size})", flush=True)
            for mode in args.decode.split(","):
                r = eval_path(m, Path(d) / "ds", len(paths), args.batch_size, workers, mode,
                              args.warmup * args.batch_size, sync)
                if "img_s" in r:
                    r["of_forward_limit"] = round(r["img_s"] / limit, 3)
                    print(f"  eval path, decode {mode}: {r['img_s']:.0f} img/s = {r['of_forward_limit']:.2f} of the "
                          f"forward limit ({r['images']} images, load1 {r['load1']})", flush=True)
                else:
                    print(f"  eval path, decode {mode}: {r['error']}", flush=True)
                row["modes"].append(r)
            rows.append(row)
            del m
    if not args.smoke:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "gpu_throughput.json").write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
