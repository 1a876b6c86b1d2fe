"""The naive peer of ``bench_serve.py``: a FastAPI server that runs the transformers zero-shot image pipeline once
per request (no batching, the class-name prompts encoded again on every call), as a first attempt would.

Usage: ``python benchmarks/naive_serve.py MODEL_DIR LABELS.json PORT`` (serves POST /v1/classify on 127.0.0.1
with the request shape of ``visroute serve``: ``{"image": base64, "top_k": k}``)."""

from __future__ import annotations

import base64
import io
import json
import sys

from pydantic import BaseModel


class Req(BaseModel):
    image: str
    top_k: int = 5


def make_app(model_dir: str, labels: list[str], template: str):
    from fastapi import FastAPI
    from PIL import Image
    from transformers import pipeline

    classify = pipeline("zero-shot-image-classification", model=model_dir, device="cpu")
    app = FastAPI()

    @app.get("/readyz")
    def ready():
        return {"status": "ready"}

    @app.post("/v1/classify")
    def post(req: Req):  # a plain def: FastAPI runs it in its thread pool
        image = Image.open(io.BytesIO(base64.b64decode(req.image))).convert("RGB")
        out = classify(image, candidate_labels=labels, hypothesis_template=template)[: req.top_k]
        return {"labels": [o["label"] for o in out], "scores": [float(o["score"]) for o in out]}

    return app


if __name__ == "__main__":
    import uvicorn

    model_dir, labels_file, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    labels = json.loads(open(labels_file, encoding="utf-8").read())
    uvicorn.run(make_app(model_dir, labels, "a photo of a {}."), host="127.0.0.1", port=port, log_level="warning")
