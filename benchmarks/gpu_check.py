"""CUDA check (run on a machine with a GPU): the same tiny CLIP weights give the same zero-shot probabilities in
fp32 on the CPU and in fp32 / fp16 / bf16 on CUDA, and `classify`'s pipelined decoding keeps the GPU fed
(images/s of visroute's loader + forward vs the raw forward on pre-decoded tensors, ViT-B/32-sized random model).

    PYTHONPATH=src python benchmarks/gpu_check.py --images ../shared/data/imagenet-sample
"""

from __future__ import annotations

import argparse
import glob
import tempfile
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", default="../shared/data/imagenet-sample")
    ap.add_argument("--limit", type=int, default=512)
    args = ap.parse_args()
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPTokenizer

    from visroute.features import encode_image_files
    from visroute.heads import ZeroShotClassifier
    from visroute.models import load_model
    from visroute.models.tiny import build_tiny_clip, write_clip_tokenizer

    paths = sorted(glob.glob(f"{args.images}/*.JPEG") + glob.glob(f"{args.images}/*.jpg"))[: args.limit]
    if not paths:  # no shared data on this machine: make some
        from PIL import Image
        import numpy as np

        tmpimg = tempfile.mkdtemp()
        rng = np.random.default_rng(0)
        for i in range(args.limit):
            Image.fromarray(rng.integers(0, 255, (375, 500, 3), dtype=np.uint8)).save(f"{tmpimg}/{i:04d}.jpg")
        paths = sorted(glob.glob(f"{tmpimg}/*.jpg"))
    labels = ["tench", "goldfish", "great white shark", "tabby cat", "garbage truck", "volcano", "banana", "soccer ball"]
    print(f"torch {torch.__version__}, cuda {torch.cuda.is_available()} {torch.cuda.get_device_name(0) if torch.cuda.is_available() else ''}")
    with tempfile.TemporaryDirectory() as d:
        build_tiny_clip(d, seed=1, hidden=64, layers=2)
        ref = None
        for device, dtype in [("cpu", "fp32"), ("cuda", "fp32"), ("cuda", "fp16"), ("cuda", "bf16")]:
            m = load_model(f"hf:{d}", device=device, dtype=dtype)
            head = ZeroShotClassifier(m, ["a photo of a {c}."]).fit(labels)
            p = torch.from_numpy(head.predict_proba(encode_image_files(m, paths[:64], num_workers=4).embeddings))
            if ref is None:
                ref = p
            print(f"{device:5s} {dtype}: max |p - p_cpu_fp32| = {(p - ref).abs().max().item():.2e}, "
                  f"top-1 agreement {(p.argmax(1) == ref.argmax(1)).float().mean().item():.3f}")
        # ViT-B/32-sized random model: loader + forward vs raw forward
        big = f"{d}/b32"
        write_clip_tokenizer(big)
        vocab = len(CLIPTokenizer.from_pretrained(big))
        cfg = CLIPConfig(text_config=dict(vocab_size=vocab, hidden_size=512, intermediate_size=2048, num_hidden_layers=12,
                                          num_attention_heads=8),
                         vision_config=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                                            num_attention_heads=12, image_size=224, patch_size=32), projection_dim=512)
        CLIPModel(cfg).save_pretrained(big)
        CLIPImageProcessor(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224}).save_pretrained(big)
        m = load_model(f"hf:{big}", device="cuda", dtype="fp16")
        pix = torch.stack([m.preprocess(__import__("visroute").data.images.load_image(p))["pixel_values"] for p in paths])
        torch.cuda.synchronize()
        t = time.perf_counter()
        for s in range(0, len(pix), 128):
            m.encode_images({"pixel_values": pix[s : s + 128]})
        torch.cuda.synchronize()
        raw = len(pix) / (time.perf_counter() - t)
        for workers in (4, 8, 14):
            t = time.perf_counter()
            enc = encode_image_files(m, paths, batch_size=128, num_workers=workers)
            full = len(enc.paths) / (time.perf_counter() - t)
            print(f"ViT-B/32 fp16 on GPU: raw forward {raw:.0f} img/s; decode+preprocess+forward with {workers} workers "
                  f"{full:.0f} img/s ({full / raw:.2f} of raw; decode-bound)")


if __name__ == "__main__":
    main()
