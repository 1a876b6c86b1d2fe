"""One image road: ``decode: exact | fast | gpu`` is a named, recorded choice, ``exact`` by default everywhere, and
every caller (CLI, Python API, /v1/classify, the Ray engine) gets the same features and scores in each mode.

The ``gpu`` mode's fallback logic runs here with a CPU stand-in for nvJPEG (no GPU in CI); without CUDA the mode
is one error line.
"""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from visroute.cli import app

LABELS = ["tench", "goldfish", "volcano"]


@pytest.fixture(scope="module")
def clip64(tiny_clip64_dir):
    return tiny_clip64_dir


def test_exact_is_the_default_everywhere():
    import inspect

    from visroute import api
    from visroute.batch_classify import ClassifyJob, iter_classify
    from visroute.cli.classify import ClassifyArgs
    from visroute.cli.evaluate import EvalArgs
    from visroute.data.batches import DECODE_MODES, iter_preprocessed_batches
    from visroute.features import encode_image_files, iter_encoded_batches
    from visroute.features.cache import FeatureCache
    from visroute.pipeline.spec import DECODE_MODES as SPEC_MODES, PipelineSpec, SpecError
    from visroute.serve.config import ModelEntry

    assert DECODE_MODES == SPEC_MODES == ("exact", "fast", "gpu")
    assert PipelineSpec(model="random-tiny").decode == "exact"
    assert PipelineSpec.from_dict({"model": "random-tiny", "decode": "fast"}).to_dict()["decode"] == "fast"
    with pytest.raises(SpecError, match="decode must be one of"):
        PipelineSpec(model="random-tiny", decode="quick")
    assert ClassifyArgs.__dataclass_fields__["decode"].default == "exact"
    assert EvalArgs.__dataclass_fields__["decode"].default == "exact"
    assert ModelEntry("m", "random-tiny").decode == "exact"
    assert ClassifyJob.__dataclass_fields__["decode"].default == "exact"
    for fn in (api.classify, iter_classify, iter_encoded_batches, iter_preprocessed_batches, FeatureCache.encode):
        assert inspect.signature(fn).parameters["decode"].default == "exact", fn
    assert "decode" not in inspect.signature(encode_image_files).parameters  # passed through to the above


def test_feature_cache_key_follows_the_decode_mode(clip64):
    from visroute.data.datasets import FileDataset
    from visroute.features.cache import feature_cache_key
    from visroute.models import load_model

    model = load_model(f"hf:{clip64}", device="cpu")
    ds = FileDataset("x", "x", clip64, [clip64 / "config.json"], [0], ["a"])
    exact, fast = feature_cache_key(model, ds, "exact"), feature_cache_key(model, ds, "fast")
    assert exact != fast and exact == feature_cache_key(model, ds)


def test_cli_gpu_without_cuda_is_one_line(imagenet_images):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    r = CliRunner().invoke(app, ["classify", str(imagenet_images[0]), "--labels", "a,b", "--model", "random-tiny",
                                 "--decode", "gpu"])
    assert r.exit_code == 2
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and "needs a CUDA device" in lines[0] and "Traceback" not in r.output
    r = CliRunner().invoke(app, ["classify", str(imagenet_images[0]), "--labels", "a,b", "--decode", "quick"])
    assert r.exit_code == 2 and "quick" in r.output


def _pil_decode_jpeg(refuse: set[int]):
    """A CPU stand-in for torchvision.io.decode_jpeg(list, device=...): refuses blobs of the sizes in ``refuse``."""
    import io

    from PIL import Image, ImageOps

    calls = []

    def decode(blobs, device):
        calls.append(len(blobs))
        out = []
        for b in blobs:
            raw = bytes(b.numpy())
            if len(raw) in refuse:
                raise RuntimeError("nvJPEG: unsupported")
            im = ImageOps.exif_transpose(Image.open(io.BytesIO(raw))).convert("RGB")
            out.append(torch.from_numpy(np.asarray(im).copy()).permute(2, 0, 1).to(device))
        return out

    return decode, calls


def test_gpu_decoder_falls_back_to_the_cpu_and_counts(clip64, imagenet_images, tmp_path):
    from PIL import Image

    from visroute.data.gpu_decode import GpuDecoder, read_for_gpu
    from visroute.data.images import FileSource, load_image
    from visroute.data.pixels import pixel_plan
    from visroute.models import load_model

    model = load_model(f"hf:{clip64}", device="cpu")
    plan = pixel_plan(model.preprocess)
    png, cmyk = tmp_path / "a.png", tmp_path / "c.jpg"
    Image.open(imagenet_images[1]).save(png)
    Image.open(imagenet_images[2]).convert("CMYK").save(cmyk)
    refused = imagenet_images[3]
    files = [imagenet_images[0], png, cmyk, refused]
    src = FileSource(files)
    entries = [read_for_gpu(src, i, plan) for i in range(len(files))]
    assert [k for k, _ in entries] == ["jpeg", "cpu", "cpu", "jpeg"]  # PNG and CMYK never reach nvJPEG
    fake, calls = _pil_decode_jpeg({refused.stat().st_size})
    dec = GpuDecoder(plan, "cpu", decode_jpeg=fake)
    pixels, failed = dec.decode(entries)
    assert failed == [] and pixels.shape == (4, 3, 64, 64) and pixels.dtype == torch.uint8
    assert (dec.on_gpu, dec.on_cpu) == (1, 3)  # the refused JPEG was retried alone, then decoded on the CPU
    assert calls == [2, 1, 1]
    for r in (1, 2, 3):  # CPU fallbacks take the exact path, bit for bit
        assert torch.equal(pixels[r], plan.pixels(load_image(files[r])))
    exact0 = plan.pixels(load_image(files[0])).int()
    assert (pixels[0].int() - exact0).abs().float().mean() < 2.0  # the device resize: close to the exact one

    broken = tmp_path / "broken.jpg"
    broken.write_bytes(imagenet_images[0].read_bytes()[:200])
    pixels, failed = GpuDecoder(plan, "cpu", decode_jpeg=_pil_decode_jpeg({200})[0]).decode([("jpeg", broken.read_bytes())])
    assert pixels is None and len(failed) == 1 and failed[0][0] == 0 and "truncated" in failed[0][1]


@pytest.fixture
def gpu_stand_in(monkeypatch):
    """``decode: gpu`` on this CPU-only machine: CUDA's check passes and nvJPEG is the PIL stand-in."""
    import visroute.data.gpu_decode as gd

    fake, _ = _pil_decode_jpeg(set())
    monkeypatch.setattr(gd, "require_gpu", lambda: None)

    class StandIn(gd.GpuDecoder):
        def __init__(self, plan, device="cuda", decode_jpeg=None):
            super().__init__(plan, "cpu", fake)

    monkeypatch.setattr(gd, "GpuDecoder", StandIn)


def test_gpu_mode_batches_report_cpu_decodes(clip64, imagenet_images, gpu_stand_in, tmp_path):
    """The whole batched road in ``gpu`` mode, nvJPEG replaced by the stand-in: skips and CPU decodes counted."""
    from visroute.data.batches import iter_preprocessed_batches
    from visroute.models import load_model
    from PIL import Image

    png = tmp_path / "a.png"
    Image.open(imagenet_images[1]).save(png)
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    model = load_model(f"hf:{clip64}", device="cpu")
    stats: dict = {}
    seen, skipped = [], []
    for idx, batch, skip in iter_preprocessed_batches([imagenet_images[0], png, bad, imagenet_images[2]],
                                                      model.preprocess, model.collate, 2, 0, "gpu", stats=stats):
        seen += idx
        skipped += [s.index for s in skip]
        if idx:
            assert batch["pixel_values"].shape == (len(idx), 3, 64, 64)
    assert seen == [0, 1, 3] and skipped == [2] and stats == {"decoded_on_cpu": 1}


def test_cpu_decodes_reach_the_result_json(clip64, imagenet_images, gpu_stand_in, tmp_path):
    """A PNG among JPEGs in ``gpu`` mode: the eval result JSON and ``classify --json`` say 1 image was decoded on the
    CPU; a re-run served from the feature cache decoded nothing (0); ``exact`` has no such count (null)."""
    from PIL import Image

    root = tmp_path / "ds"
    for cls, files in {"fish": imagenet_images[:2], "other": imagenet_images[2:3]}.items():
        (root / cls).mkdir(parents=True)
        for f in files:
            (root / cls / f.name).write_bytes(f.read_bytes())
    Image.open(imagenet_images[3]).convert("RGB").save(root / "other" / "tabby.png")

    def run(decode: str, out: str) -> dict:
        r = CliRunner().invoke(app, ["eval", "-m", f"hf:{clip64}", "-d", str(root), "--decode", decode, "--workers",
                                     "0", "--device", "cpu", "--no-progress", "--output", str(tmp_path / out)])
        assert r.exit_code == 0, r.output
        return json.loads(next((tmp_path / out).glob("*.json")).read_text())["visroute"]

    first = run("gpu", "o1")
    assert first["decode"] == "gpu" and first["decoded_on_cpu"] == 1 and first["feature_cache"]["images_encoded"] == 4
    again = run("gpu", "o2")  # every feature cached: no image decoded in this run
    assert again["decoded_on_cpu"] == 0 and again["feature_cache"]["images_encoded"] == 0
    assert run("exact", "o3")["decoded_on_cpu"] is None

    r = CliRunner().invoke(app, ["classify", str(root), "--labels", ",".join(LABELS), "--model", f"hf:{clip64}",
                                 "--json", "--device", "cpu", "--workers", "0", "--decode", "gpu"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["decode"] == "gpu" and doc["n_classified"] == 4 and doc["decoded_on_cpu"] == 1


def test_ray_encode_worker_counts_cpu_decodes(clip64, imagenet_images, gpu_stand_in, tmp_path):
    """The Ray actor's chunk carries its CPU-decode count once (on its first row), for the driver to sum."""
    from PIL import Image

    from visroute.data.images import FileSource
    from visroute.engine.workers import EncodeWorker
    from visroute.models import load_model
    from visroute.pipeline.spec import PipelineSpec

    png = tmp_path / "a.png"
    Image.open(imagenet_images[1]).save(png)
    model = load_model(f"hf:{clip64}", device="cpu")
    expect = {"weights": model.weights_fingerprint, "preprocess": model.preprocess_fingerprint}
    worker = EncodeWorker(PipelineSpec(model=f"hf:{clip64}", device="cpu").to_json(),
                          FileSource([imagenet_images[0], png, imagenet_images[2]]), "gpu", 32, expect)
    out = worker({"chunk": np.array([0, 1]), "indices": [np.array([0, 1]), np.array([2])]})
    assert out["decoded_on_cpu"].tolist() == [1, 0, 0] and list(out["error"]) == ["", "", ""]


def _cli_scores(model: str, image, decode: str) -> tuple[list[str], list[float], dict]:
    r = CliRunner().invoke(app, ["classify", str(image), "--labels", ",".join(LABELS), "--model", model, "--json",
                                 "--device", "cpu", "--top-k", "3", "--decode", decode])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    return doc["predictions"][0]["labels"], doc["predictions"][0]["scores"], doc


def _service_scores(model: str, image, decode: str) -> dict:
    import base64

    from fastapi.testclient import TestClient

    from visroute.serve.app import create_app
    from visroute.serve.config import ModelEntry, ServeConfig

    cfg = ServeConfig(models=(ModelEntry("m", model, device="cpu", decode=decode),))
    with TestClient(create_app(cfg, open_mode=True)) as client:
        for _ in range(600):
            if client.app.state.serve.ready:
                break
            time.sleep(0.1)
        r = client.post("/v1/classify", json={"image": base64.b64encode(image.read_bytes()).decode(),
                                               "labels": LABELS, "top_k": 3})
        assert r.status_code == 200, r.text
        card = next(c for c in client.get("/v1/models").json()["data"] if c["id"] == "m")
        assert card["decode"] == decode
        return r.json()


@pytest.mark.parametrize("decode", ["exact", "fast"])
def test_cli_api_service_and_ray_agree(clip64, imagenet_images, decode):
    """One spec, one image, one label set: the same features and scores from every caller."""
    from PIL import Image

    import visroute
    from visroute.engine import make_engine
    from visroute.features import encode_image_files
    from visroute.pipeline import PipelineSpec, build_pipeline

    spec = f"hf:{clip64}"
    image = imagenet_images[0]
    labels, scores, doc = _cli_scores(spec, image, decode)
    assert doc["decode"] == decode

    api_files = visroute.classify(str(image), LABELS, model=spec, top_k=3, device="cpu", decode=decode)[0]
    with Image.open(image) as im:
        api_pil = visroute.classify(im.convert("RGB"), LABELS, model=spec, top_k=3, device="cpu", decode=decode)[0]
    service = _service_scores(spec, image, decode)
    assert service["decode"] == decode
    # a PIL image arrives decoded, so 'fast' cannot draft its JPEG: only the resize is fast there
    for other in (api_files, service) + ((api_pil,) if decode == "exact" else ()):
        assert other["labels"] == labels
        np.testing.assert_allclose(other["scores"], scores, rtol=0, atol=1e-6)

    head = build_pipeline(PipelineSpec(model=spec, device="cpu", decode=decode)).classifier(LABELS)
    local = encode_image_files(head.model, [image], decode=decode).embeddings
    ray = pytest.importorskip("ray", reason="the ray extra is not installed")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        engine = make_engine("ray", actors=1)
        remote = encode_image_files(head.model, [image], decode=decode, engine=engine).embeddings
    finally:
        ray.shutdown()
    np.testing.assert_allclose(remote.numpy(), local.numpy(), rtol=0, atol=1e-6)
    idx, ray_scores = head.predict_topk(remote, 3)
    assert [LABELS[j] for j in idx[0]] == labels
    np.testing.assert_allclose(ray_scores[0], scores, rtol=0, atol=1e-6)


def test_fast_differs_from_exact_on_a_small_input_model(clip64, imagenet_images):
    """Why ``exact`` is the default: on a 64-px model ``fast`` moves the probabilities measurably."""
    _, exact, _ = _cli_scores(f"hf:{clip64}", imagenet_images[0], "exact")
    _, fast, _ = _cli_scores(f"hf:{clip64}", imagenet_images[0], "fast")
    assert max(abs(a - b) for a, b in zip(sorted(exact), sorted(fast))) > 1e-5
